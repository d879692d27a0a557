"""What the session costs a request, in CPU, measured inside one Zope.

The HTTP benchmark (bench.py) is what a site owner sees, but on a shared
machine its numbers move with the neighbours.  This publishes requests
in-process, straight into Zope's WSGI application of a real instance, and
times the same scripts with the session and with a plain dict instead, in
alternating batches: the difference is what this product adds to a
request.  ``--steps`` splits it up (getting ``SESSION``, reading keys,
writing one), ``--profile`` shows where it goes (pyinstrument)::

    .venv-bench/bin/python benchmarks/overhead.py redis
    .venv-bench/bin/python benchmarks/overhead.py redis --steps
    .venv-bench/bin/python benchmarks/overhead.py redis --profile write
"""
import argparse
import io
import statistics
import time

import bench

from Products.BeakerSessionDataManager.tests import instance as zope_instance


# Workload: (page with the session, the same page without it).
PAGES = {
    'write': ('bench_write', 'bench_write_nosession'),
    'read': ('bench_read', 'bench_read_nosession'),
    'untouched': ('bench_untouched', 'bench_untouched'),
}


class Publisher:
    """Zope's WSGI application of an instance, called in this process."""

    def __init__(self, zope_conf):
        from Zope2.Startup.run import make_wsgi_app
        self.app = make_wsgi_app({}, zope_conf)
        self.cookie = ''

    def get(self, path):
        environ = {
            'REQUEST_METHOD': 'GET', 'PATH_INFO': '/' + path,
            'QUERY_STRING': '', 'SERVER_NAME': '127.0.0.1',
            'SERVER_PORT': '8080', 'SERVER_PROTOCOL': 'HTTP/1.1',
            'HTTP_HOST': '127.0.0.1:8080', 'wsgi.url_scheme': 'http',
            'wsgi.input': io.BytesIO(), 'wsgi.errors': io.StringIO(),
            'HTTP_COOKIE': self.cookie,
        }
        answer = []

        def start_response(status, headers, exc_info=None):
            answer.append((status, headers))

        body = b''.join(self.app(environ, start_response))
        status, headers = answer[0]
        if not status.startswith('200'):
            raise RuntimeError('%s: %s %s' % (path, status, body[:500]))
        for name, value in headers:
            if name.lower() == 'set-cookie':
                self.cookie = value.split(';', 1)[0]
        return body


def cpu_per_request(publisher, path, count):
    started = time.process_time()
    for _ in range(count):
        publisher.get(path)
    return (time.process_time() - started) / count * 1e6


def setup_scripts(session):
    scripts = [zope_instance.BEAKER_SESSION_DATA_MANAGER]
    for id, (params, body) in bench.SCRIPTS.items():
        scripts.append(zope_instance.python_script(
            id, body % {'session': session}, params))
        scripts.append(zope_instance.python_script(
            id + '_nosession', body % {'session': '{}'}, params))
    return scripts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('store', choices=bench.OURS)
    parser.add_argument('--requests', type=int, default=400,
                        help='requests per batch, default 400')
    parser.add_argument('--batches', type=int, default=7,
                        help='batches per page, default 7')
    parser.add_argument('--profile', choices=PAGES,
                        help='profile this workload instead')
    parser.add_argument('--steps', action='store_true',
                        help='instead, what each step of using the '
                             'session adds to a page that returns a string')
    args = parser.parse_args(argv)
    bench.find_counters()
    with bench.Servers([args.store]) as servers:
        target = bench.Target(args.store, 1, servers)
        try:
            target.instance.setup(
                *setup_scripts('context.REQUEST.SESSION'), *step_scripts())
            publisher = Publisher(target.instance.etc('zope.conf'))
            publisher.get('bench_write')  # the session and its cookie
            if args.steps:
                steps(publisher, args)
            elif args.profile:
                profile(publisher, PAGES[args.profile][0], args.requests)
            else:
                measure(publisher, args)
        finally:
            target.stop()


def measure(publisher, args):
    print('CPU per request in microseconds (median of %d batches of %d '
          'requests)' % (args.batches, args.requests))
    print('%-10s %10s %10s %10s' % (
        'workload', 'no session', 'session', 'added'))
    for workload, (page, plain) in PAGES.items():
        for path in (page, plain):
            publisher.get(path)  # compile, warm caches
        timings = {page: [], plain: []}
        for _ in range(args.batches):
            for path in (page, plain):
                timings[path].append(
                    cpu_per_request(publisher, path, args.requests))
        with_session = statistics.median(timings[page])
        without = statistics.median(timings[plain])
        print('%-10s %10.0f %10.0f %+9.0f (%+.1f%%)' % (
            workload, without, with_session, with_session - without,
            100 * (with_session - without) / without))


# Scripts that use the session one step more each; the first is the base.
STEPS = (
    ('nothing', "return 'x'"),
    ('request', "request = context.REQUEST\nreturn 'x'"),
    ('SESSION', "session = context.REQUEST.SESSION\nreturn 'x'"),
    ('get 1 key', "session = context.REQUEST.SESSION\n"
                  "session.get('count')\nreturn 'x'"),
    ('get 3 keys', "session = context.REQUEST.SESSION\n"
                   "session.get('count'); session.get('page')\n"
                   "session.get('recent')\nreturn 'x'"),
    ('set 1 key', "session = context.REQUEST.SESSION\n"
                  "session['count'] = session.get('count', 0) + 1\n"
                  "return 'x'"),
)


def step_scripts(steps=STEPS):
    return [zope_instance.python_script('step_%d' % number, body)
            for number, (_, body) in enumerate(steps)]


def steps(publisher, args):
    paths = ['step_%d' % number for number in range(len(STEPS))]
    for path in paths:
        publisher.get(path)
    timings = {path: [] for path in paths}
    for _ in range(args.batches):
        for path in paths:
            timings[path].append(
                cpu_per_request(publisher, path, args.requests))
    base = statistics.median(timings[paths[0]])
    print('CPU per request in microseconds (median of %d batches of %d '
          'requests), and what it adds to the first' % (
              args.batches, args.requests))
    for (label, _), path in zip(STEPS, paths):
        median = statistics.median(timings[path])
        print('%-12s %8.0f %+8.0f' % (label, median, median - base))


def profile(publisher, page, count):
    from pyinstrument import Profiler
    for _ in range(50):
        publisher.get(page)
    profiler = Profiler(interval=0.0002)
    profiler.start()
    for _ in range(count):
        publisher.get(page)
    profiler.stop()
    print(profiler.output_text(unicode=True, color=False, show_all=False))


if __name__ == '__main__':
    main()
