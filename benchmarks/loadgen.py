"""The load generator of bench.py: one measured window against one Zope.

Runs in a process of its own (bench.py starts one per window) so that its
CPU use is not charged to the orchestrator and a window starts clean.  Reads
a JSON spec from the file named by its argument and prints a JSON result::

    {"url": "http://127.0.0.1:8080/", "workload": "write",
     "concurrency": 16, "browsers": 64, "warmup": 3, "duration": 10,
     "zope_pid": 1234, "store_pid": null, "count_lost": false}

V virtual browsers, each with its own cookies and one request at a time
(two for ``shared``), are served by C workers, so that C requests are in
flight.  Only requests completed inside the measured window count.
"""
import asyncio
import json
import os
import resource
import sys
import time

import aiohttp


# Script of each workload, and the one that prepares its browsers' sessions.
PAGES = {
    'write': ('bench_write', 'bench_write'),
    'read': ('bench_read', 'bench_write'),
    'untouched': ('bench_untouched', 'bench_write'),
    'shared': ('bench_shared', 'bench_shared?lane=a'),
}
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


class Browser:
    """A cookie jar of its own; for ``shared``, two lanes (counters)."""

    def __init__(self):
        self.cookies = {}
        self.acked = {'a': 0, 'b': 0}

    def headers(self):
        if not self.cookies:
            return {}
        return {'Cookie': '; '.join(
            '%s=%s' % item for item in self.cookies.items())}

    def remember(self, response):
        for header in response.headers.getall('Set-Cookie', ()):
            name, _, rest = header.partition('=')
            self.cookies[name.strip()] = rest.split(';', 1)[0]


def cpu_seconds(pid):
    """User plus system CPU time of process ``pid`` (all its threads)."""
    if not pid:
        return None
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rpartition(')')[2].split()
    # utime and stime are fields 14 and 15; the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Window:

    def __init__(self, spec, http):
        self.spec = spec
        self.http = http
        self.url = spec['url'].rstrip('/') + '/'
        self.page, self.prime_page = PAGES[spec['workload']]
        self.measuring = False
        self.stopping = False
        self.latencies = []
        self.statuses = {}
        self.errors = {}

    async def get(self, browser, path):
        try:
            async with self.http.get(
                    self.url + path, headers=browser.headers(),
                    allow_redirects=False) as response:
                body = await response.read()
                browser.remember(response)
                return response.status, body
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return type(exc).__name__, b''

    async def request(self, browser, path, lane=None):
        started = time.monotonic()
        status, body = await self.get(browser, path)
        if lane is not None and status == 200:
            browser.acked[lane] += 1
        if self.measuring:
            self.latencies.append(time.monotonic() - started)
            if isinstance(status, int):
                self.statuses[status] = self.statuses.get(status, 0) + 1
            else:
                self.errors[status] = self.errors.get(status, 0) + 1

    async def worker(self, lanes):
        while not self.stopping:
            browser, lane = await lanes.get()
            path = self.page if lane is None else '%s?lane=%s' % (
                self.page, lane)
            await self.request(browser, path, lane)
            lanes.put_nowait((browser, lane))

    async def prime(self, browsers):
        """Give every browser its session (and cookie) before the window."""
        semaphore = asyncio.Semaphore(self.spec['concurrency'])

        async def one(browser):
            async with semaphore:
                status, _ = await self.get(browser, self.prime_page)
                if self.spec['workload'] == 'shared' and status == 200:
                    browser.acked['a'] += 1

        await asyncio.gather(*map(one, browsers))

    async def counters(self):
        async with self.http.get(self.url + '@@bench-counters') as response:
            return json.loads(await response.read())

    def sample(self):
        return {'time': time.monotonic(),
                'zope_cpu': cpu_seconds(self.spec['zope_pid']),
                'store_cpu': cpu_seconds(self.spec.get('store_pid')),
                'client_cpu': own_cpu_seconds()}

    async def lost_writes(self, browsers):
        """Acknowledged increments of the lanes missing from the session."""
        lost = extra = 0
        for browser in browsers:
            status, body = await self.get(browser, 'bench_lanes')
            if status != 200:
                raise RuntimeError('bench_lanes answered %s' % status)
            stored = dict(zip('ab', map(int, body.split())))
            for lane, acked in browser.acked.items():
                lost += max(0, acked - stored[lane])
                extra += max(0, stored[lane] - acked)
        return lost, extra

    async def run(self):
        spec = self.spec
        concurrency = spec['concurrency']
        shared = spec['workload'] == 'shared'
        # Two requests of one browser always in flight for ``shared``.
        count = concurrency // 2 if shared else spec['browsers']
        browsers = [Browser() for _ in range(count)]
        await self.prime(browsers)
        lanes = asyncio.Queue()
        for browser in browsers:
            for lane in ('a', 'b') if shared else (None,):
                lanes.put_nowait((browser, lane))
        workers = [asyncio.ensure_future(self.worker(lanes))
                   for _ in range(concurrency)]
        await asyncio.sleep(spec['warmup'])
        before_counters = await self.counters()
        before = self.sample()
        self.measuring = True
        await asyncio.sleep(spec['duration'])
        self.measuring = False
        after = self.sample()
        self.stopping = True
        await asyncio.gather(*workers)
        after_counters = await self.counters()
        result = self.summary(before, after, before_counters, after_counters)
        if shared and spec.get('count_lost'):
            result['lost_writes'], result['unacknowledged_writes'] = \
                await self.lost_writes(browsers)
            result['acknowledged_writes'] = sum(
                sum(browser.acked.values()) for browser in browsers)
        return result

    def summary(self, before, after, before_counters, after_counters):
        elapsed = after['time'] - before['time']
        done = len(self.latencies)
        latencies = sorted(self.latencies)

        def percentile(fraction):
            if not latencies:
                return None
            index = min(len(latencies) - 1, int(fraction * len(latencies)))
            return latencies[index] * 1000

        def per_request(key):
            if before[key] is None or not done:
                return None
            return (after[key] - before[key]) / done * 1000

        counted = {name: after_counters.get(name, 0)
                   - before_counters.get(name, 0)
                   for name in set(after_counters) | set(before_counters)}
        return {
            'requests': done,
            'elapsed': elapsed,
            'rps': done / elapsed,
            'p50_ms': percentile(0.50),
            'p95_ms': percentile(0.95),
            'p99_ms': percentile(0.99),
            'statuses': {str(k): v for k, v in self.statuses.items()},
            'errors': self.errors,
            'non_200': done - self.statuses.get(200, 0),
            'conflicts': counted.get('conflicts', 0),
            'failed_attempts': counted.get('failures', 0),
            'retried_attempts': counted.get('retried', 0),
            'failures': {name.partition(':')[2]: value
                         for name, value in counted.items()
                         if name.startswith('failure:') and value},
            'zope_cpu_ms_per_request': per_request('zope_cpu'),
            'store_cpu_ms_per_request': per_request('store_cpu'),
            'client_cpu_ms_per_request': per_request('client_cpu'),
        }


async def main(spec):
    connector = aiohttp.TCPConnector(limit=spec['concurrency'] + 1)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
            connector=connector, timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar()) as http:
        return await Window(spec, http).run()


if __name__ == '__main__':
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    json.dump(asyncio.run(main(spec)), sys.stdout)
