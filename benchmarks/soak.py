"""Soak test: many requests through a real Zope on the redis store.

Not part of the test suite (it takes minutes).  Run it from a checkout::

    .venv/bin/python benchmarks/soak.py            # 50,000 requests
    .venv/bin/python benchmarks/soak.py --requests 5000

It starts its own redis-server and a Zope instance (runwsgi, made with the
test suite's helpers) and lets ``--concurrency`` workers play virtual
browsers, each with a cookie of its own: a browser writes a new key in each
request, reads its whole session back every tenth request, and after
``--browser-requests`` requests it checks its session a last time and is
replaced by a new browser.  A read that misses a key whose write was
acknowledged (HTTP 200) is a lost write.  Meanwhile the resident memory of
the Zope process (VmRSS in /proc/PID/status) is sampled every few seconds.

The result: requests, errors, lost writes, throughput and the memory
series; the exit status is 1 if there were errors or lost writes, or if
memory kept growing (the last quarter of the run more than
``--max-growth`` percent above the second quarter).  Only the standard
library is used on the client side (threads, http.client keep-alive).
"""
import argparse
import http.client
import statistics
import sys
import threading
import time

from Products.BeakerSessionDataManager.tests import instance
from Products.BeakerSessionDataManager.tests import servers


WRITE_SCRIPT = instance.python_script('soak_write', '''\
    session = container.REQUEST.SESSION
    session[key] = int(value)
    return 'ok'
    ''', params='key, value')
READ_SCRIPT = instance.python_script('soak_read', '''\
    keys = container.REQUEST.SESSION.keys()
    keys.sort()
    return 'keys: ' + ' '.join(keys)
    ''')


class Totals:
    """What the workers found, counted under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.errors = []
        self.lost = []
        self.browsers = 0

    def add(self, requests=0, error=None, lost=(), browsers=0):
        with self.lock:
            self.requests += requests
            self.browsers += browsers
            if error is not None:
                self.errors.append(error)
            self.lost.extend(lost)


class Browser:
    """One visitor: its cookie and the keys the server acknowledged."""

    def __init__(self, connection, totals):
        self.connection = connection
        self.totals = totals
        self.cookie = None
        self.acknowledged = set()

    def get(self, path):
        headers = {'Cookie': self.cookie} if self.cookie else {}
        try:
            self.connection.request('GET', path, headers=headers)
            response = self.connection.getresponse()
            body = response.read().decode('utf-8', 'replace')
        except (OSError, http.client.HTTPException) as exc:
            self.connection.close()  # reconnects on the next request
            self.totals.add(requests=1, error='%s %r' % (path, exc))
            return None
        self.totals.add(requests=1)
        set_cookie = response.getheader('Set-Cookie')
        if set_cookie:
            if self.cookie is not None:
                self.totals.add(error='%s: session replaced' % path)
            self.cookie = set_cookie.split(';')[0]
        if response.status != 200:
            self.totals.add(error='%s: %s %s' % (
                path, response.status, body[:200]))
            return None
        return body

    def write(self, number):
        key = 'k%04d' % number
        if self.get('/soak_write?key=%s&value=%d' % (key, number)) == 'ok':
            self.acknowledged.add(key)

    def check(self):
        if self.cookie is None:
            return  # No request yet.
        body = self.get('/soak_read')
        if body is not None:
            lost = self.acknowledged - set(body.split()[1:])
            self.totals.add(lost=sorted(lost))


def worker(port, take, browser_requests, totals):
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    while True:
        browser = Browser(connection, totals)
        totals.add(browsers=1)
        for number in range(browser_requests):
            if take() is None:
                browser.check()
                return
            if number % 10 == 9:
                browser.check()
            else:
                browser.write(number)
        browser.check()


def rss_kib(pid):
    with open('/proc/%d/status' % pid) as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return None


def sample_memory(pid, interval, samples, done):
    started = time.monotonic()
    while not done.wait(interval):
        samples.append((round(time.monotonic() - started), rss_kib(pid)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--requests', type=int, default=50000)
    parser.add_argument('--concurrency', type=int, default=16)
    parser.add_argument('--threads', type=int, default=4,
                        help='waitress threads of the Zope instance')
    parser.add_argument('--browser-requests', type=int, default=100)
    parser.add_argument('--sample-interval', type=float, default=5)
    parser.add_argument('--max-growth', type=float, default=5,
                        help='percent, last quarter over second quarter')
    args = parser.parse_args(argv)

    with servers.RedisServer() as redis, instance.ZopeInstance(
            {'session.type': 'ext:redis', 'session.url': redis.url,
             'session.secret': instance.new_secret()},
            threads=args.threads) as zope:
        zope.setup(instance.BEAKER_SESSION_DATA_MANAGER, WRITE_SCRIPT,
                   READ_SCRIPT)
        zope.start()
        pid = zope.process.pid
        # The remaining budget of requests, shared by the workers (the
        # final checks of the browsers come on top of it).
        budget = iter(range(args.requests))
        budget_lock = threading.Lock()

        def take():
            with budget_lock:
                return next(budget, None)
        totals = Totals()
        samples = [(0, rss_kib(pid))]
        done = threading.Event()
        sampler = threading.Thread(target=sample_memory, args=(
            pid, args.sample_interval, samples, done), daemon=True)
        started = time.monotonic()
        sampler.start()
        workers = [threading.Thread(target=worker, args=(
            zope.port, take, args.browser_requests, totals))
            for _ in range(args.concurrency)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        elapsed = time.monotonic() - started
        done.set()
        samples.append((round(elapsed), rss_kib(pid)))
        redis_keys = redis.client().dbsize()

    return report(args, totals, elapsed, samples, redis_keys)


def report(args, totals, elapsed, samples, redis_keys):
    rss = [kib for _, kib in samples]
    quarter = max(1, len(rss) // 4)
    second = statistics.mean(rss[quarter:2 * quarter] or rss)
    last = statistics.mean(rss[-quarter:])
    growth = 100.0 * (last - second) / second
    print('requests: %d (%d virtual browsers, concurrency %d, %d waitress '
          'threads)' % (totals.requests, totals.browsers, args.concurrency,
                        args.threads))
    print('elapsed: %.1f s, %.0f requests/s' % (
        elapsed, totals.requests / elapsed))
    print('errors: %d' % len(totals.errors))
    for error in totals.errors[:10]:
        print('  ', error)
    print('lost writes: %d' % len(totals.lost))
    print('sessions in redis: %d' % redis_keys)
    print('Zope RSS (MiB) every %gs: %s' % (args.sample_interval, ' '.join(
        '%.1f' % (kib / 1024) for kib in rss)))
    print('RSS min %.1f, max %.1f MiB; last quarter vs second quarter: '
          '%+.1f%%' % (min(rss) / 1024, max(rss) / 1024, growth))
    failed = totals.errors or totals.lost or growth > args.max_growth
    print('FAILED' if failed else 'OK')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
