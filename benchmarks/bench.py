"""Benchmark Zope sessions: Beaker stores against stock sessions, mcdutils
and no session at all.

``make bench`` (or ``.venv-bench/bin/python benchmarks/bench.py``) starts one
real Zope instance per target (mkwsgiinstance + runwsgi on 127.0.0.1), sets
each up over the ZMI as a site manager would, and drives them in turn from a
separate load-generator process (loadgen.py).  Every target runs between
two windows of ``nosession`` (N A N B N ...), and is compared with those,
so that a noisy neighbour or a slower host hurts both sides alike.
Results go to benchmarks/results/NAME.json, NAME.rst and NAME.png.

Targets: ``nosession`` (the same scripts with a plain dict for a session:
the limit), ``stock`` (Products.Sessions + Transience in a temporary storage
mounted at /temp_folder), ``mcdutils`` (Products.mcdutils on memcached) and
this product on the ``memory``, ``file``, ``redis``, ``memcached`` and
``postgresql`` stores.
"""
import argparse
import base64
import datetime
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.parse
import urllib.request

from Products.BeakerSessionDataManager.tests import instance as zope_instance
from Products.BeakerSessionDataManager.tests import servers


HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results')

TARGETS = ('nosession', 'stock', 'mcdutils', 'memory', 'file', 'redis',
           'memcached', 'postgresql')
OURS = ('memory', 'file', 'redis', 'memcached', 'postgresql')
WORKLOADS = ('write', 'read', 'untouched', 'shared')
LABELS = {
    'nosession': 'no session',
    'stock': 'stock (Transience)',
    'mcdutils': 'mcdutils (memcached)',
    'memory': 'Beaker memory',
    'file': 'Beaker file',
    'redis': 'Beaker redis',
    'memcached': 'Beaker memcached',
    'postgresql': 'Beaker PostgreSQL',
}
WORKLOAD_TITLES = {
    'write': 'write-heavy: the script writes three keys',
    'read': 'read-mostly: the script reads three keys',
    'untouched': 'untouched: the page never asks for the session',
    'shared': 'two requests of one browser at a time, each '
              'incrementing its own key',
}
PACKAGES = ('Zope', 'ZODB', 'waitress', 'Products.Sessions',
            'Products.TemporaryFolder', 'Products.mcdutils', 'Beaker',
            'redis', 'python-memcached', 'SQLAlchemy', 'psycopg2-binary',
            'aiohttp')

# The temporary storage of Products.Sessions' README, for ``stock``.
TEMPORARY_STORAGE = '''
<zodb_db temporary>
    <temporarystorage>
      name Temporary database (for sessions)
    </temporarystorage>
    mount-point /temp_folder
    container-class Products.TemporaryFolder.TemporaryContainer
</zodb_db>
'''
COUNTERS_SLUG = '<include package="zope_bench_counters" />\n'

# The Python Scripts of the workloads; ``%(session)s`` is REQUEST.SESSION,
# or a plain dict for ``nosession``.
SCRIPTS = {
    'bench_write': ('', '''\
        session = %(session)s
        count = session.get('count', 0) + 1
        session['count'] = count
        session['page'] = 'page %%d' %% count
        session['recent'] = ['item %%d' %% i for i in range(count - 3, count)]
        return 'count %%d' %% count
        '''),
    'bench_read': ('', '''\
        session = %(session)s
        return '%%s %%s %%s' %% (session.get('count'), session.get('page'),
                              session.get('recent'))
        '''),
    'bench_untouched': ('', '''\
        return 'count %%d' %% 0
        '''),
    'bench_shared': ('lane', '''\
        if lane not in ('a', 'b'):
            raise ValueError(lane)
        session = %(session)s
        count = session.get(lane, 0) + 1
        session[lane] = count
        return str(count)
        '''),
    'bench_lanes': ('', '''\
        session = %(session)s
        return '%%d %%d' %% (session.get('a', 0), session.get('b', 0))
        '''),
}


class ZMI:
    """Sets an instance up over HTTP, as a site manager does in the ZMI."""

    def __init__(self, instance):
        self.instance = instance
        credentials = '%s:%s' % zope_instance.ADMIN
        self.authorization = 'Basic ' + base64.b64encode(
            credentials.encode()).decode()

    def post(self, path, fields):
        request = urllib.request.Request(
            self.instance.url(path),
            data=urllib.parse.urlencode(fields).encode(),
            headers={'Authorization': self.authorization})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError('POST %s: %s\n%s' % (
                path, exc, exc.read()[-2000:].decode(errors='replace')))

    def add_script(self, id, params, body, session):
        source = '##parameters=%s\n%s' % (
            params, textwrap.dedent(body) % {'session': session})
        self.post('manage_addProduct/PythonScripts/manage_addPythonScript',
                  [('id', id), ('file', source)])


class Servers:
    """The store servers the targets need, on free loopback ports."""

    def __init__(self, targets):
        self.targets = targets
        self.redis = self.memcached = self.mcdutils = self.postgresql = None

    def __enter__(self):
        try:
            if 'redis' in self.targets:
                self.redis = servers.RedisServer().start()
            if 'memcached' in self.targets:
                self.memcached = servers.MemcachedServer().start()
            if 'mcdutils' in self.targets:
                self.mcdutils = servers.MemcachedServer().start()
            if 'postgresql' in self.targets:
                self.postgresql = servers.postgresql_url()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info):
        for server in (self.redis, self.memcached, self.mcdutils):
            if server is not None:
                server.cleanup()


class Target:
    """One Zope instance serving the scripts with one kind of session."""

    def __init__(self, name, threads, servers, options=None):
        self.name = name
        self.servers = servers
        self.store_process = None
        self.table = None
        product_config = None
        if name in OURS:
            product_config = {'session.secret': secrets.token_urlsafe(36)}
            product_config.update(options or {})
            if name in ('memory', 'file'):
                product_config['session.type'] = name
            elif name == 'redis':
                product_config['session.type'] = 'ext:redis'
                product_config['session.url'] = servers.redis.url
                self.store_process = servers.redis.process
            elif name == 'memcached':
                product_config['session.type'] = 'ext:memcached'
                product_config['session.url'] = servers.memcached.address
                self.store_process = servers.memcached.process
            elif name == 'postgresql':
                self.table = 'bench_sessions_%s' % secrets.token_hex(4)
                product_config['session.type'] = 'ext:database'
                product_config['session.url'] = servers.postgresql
                product_config['session.table_name'] = self.table
        elif name == 'mcdutils':
            self.store_process = servers.mcdutils.process
        self.instance = zope_instance.ZopeInstance(
            product_config, threads=threads)
        if name == 'stock':
            self.instance._zope_conf += TEMPORARY_STORAGE
            self.instance.configure(None)
        self._instrument()

    def _instrument(self):
        """Load the attempt counters; keep waitress from logging the queue
        depth on every request of a saturated server."""
        includes = self.instance.etc('package-includes')
        os.makedirs(includes, exist_ok=True)
        with open(os.path.join(
                includes, 'zope_bench_counters-configure.zcml'), 'w') as f:
            f.write(COUNTERS_SLUG)
        path = self.instance.etc('zope.ini')
        with open(path) as f:
            text = f.read()
        text = text.replace(
            '[logger_waitress.queue]\nlevel = INFO',
            '[logger_waitress.queue]\nlevel = ERROR')
        with open(path, 'w') as f:
            f.write(text)

    @property
    def pid(self):
        return self.instance.process.pid

    @property
    def store_pid(self):
        return self.store_process.pid if self.store_process else None

    def start(self):
        self.instance.start()
        zmi = ZMI(self.instance)
        session = 'context.REQUEST.SESSION'
        if self.name == 'nosession':
            session = '{}'
        elif self.name == 'stock':
            # Products.Sessions' README: add the ZODB Mount Point.
            zmi.post('manage_addProduct/ZODBMountPoint/manage_addMounts',
                     [('paths:list', '/temp_folder'),
                      ('create_mount_points:int', '1')])
        elif self.name == 'mcdutils':
            # Products.mcdutils' usage documentation, step by step.
            zmi.post('manage_addProduct/mcdutils/addMemCacheProxy',
                     [('id', 'mcproxy')])
            zmi.post('mcproxy/manage_editProperties',
                     [('title', ''),
                      ('servers:lines', self.servers.mcdutils.address)])
            zmi.post('manage_addProduct/mcdutils/'
                     'addMemCacheSessionDataContainer', [('id', 'mcsdc')])
            zmi.post('mcsdc/manage_editProperties',
                     [('title', ''), ('proxy_path', '/mcproxy')])
            zmi.post('session_data_manager/manage_changeSDM',
                     [('title', ''), ('path', '/mcsdc'),
                      ('requestName', 'SESSION')])
        else:
            # This product's README: replace the session data manager.
            zmi.post('manage_delObjects',
                     [('ids:list', 'session_data_manager')])
            zmi.post('manage_addProduct/BeakerSessionDataManager/'
                     'addBeakerSessionDataManager',
                     [('id', 'session_data_manager'),
                      ('title', 'Beaker Session Data Manager')])
        for id, (params, body) in SCRIPTS.items():
            zmi.add_script(id, params, body, session)
        return self

    def stop(self):
        self.instance.cleanup()
        if self.table:
            drop_table(self.servers.postgresql, self.table)


def find_counters():
    """Let the instances we start import zope_bench_counters."""
    os.environ['PYTHONPATH'] = os.pathsep.join(
        filter(None, [HERE, os.environ.get('PYTHONPATH')]))


def load_window(spec):
    """Run loadgen.py on ``spec``; its JSON result."""
    with tempfile.NamedTemporaryFile('w', suffix='.json') as f:
        json.dump(spec, f)
        f.flush()
        result = subprocess.run(
            [sys.executable, os.path.join(HERE, 'loadgen.py'), f.name],
            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError('loadgen failed:\n%s' % result.stderr[-3000:])
    return json.loads(result.stdout)


def machine():
    """What ran the benchmark: hardware, versions, load."""
    cpu = 'unknown'
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.partition(':')[2].strip()
                break
    with open('/proc/meminfo') as f:
        memory_kb = int(f.readline().split()[1])
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    for name, command in (('redis-server', ['redis-server', '--version']),
                          ('memcached', ['memcached', '-V'])):
        try:
            versions[name] = subprocess.run(
                command, capture_output=True, text=True).stdout.split()[
                    2 if name == 'redis-server' else 1].lstrip('v=')
        except (OSError, IndexError):
            versions[name] = None
    return {
        'cpu': cpu,
        'cores': os.cpu_count(),
        'memory_gb': round(memory_kb / 1024 / 1024, 1),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'versions': versions,
    }


def postgresql_version(url):
    import sqlalchemy
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                sqlalchemy.text('SHOW server_version')).scalar()
    finally:
        engine.dispose()


def drop_table(url, table):
    import sqlalchemy
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(
                'DROP TABLE IF EXISTS %s' % table))
    finally:
        engine.dispose()


def relative(run, runs):
    """A run's requests/s over the mean of the ``nosession`` windows just
    before and after it."""
    if run['target'] == 'nosession':
        return 1.0
    around = [other['rps'] for other in runs
              if other['target'] == 'nosession'
              and abs(other['slot'] - run['slot']) == 1
              and all(other[key] == run[key] for key in (
                  'concurrency', 'workload', 'repetition'))]
    return run['rps'] / statistics.mean(around) if around else None


def summarize(runs, targets):
    """Medians over the repetitions; ratios to ``nosession`` from each
    run and its neighbouring no-session windows, and to ``stock`` and
    ``mcdutils`` as ratios of those."""
    summary = {}
    keys = sorted({(run['concurrency'], run['workload']) for run in runs},
                  key=lambda key: (key[0], WORKLOADS.index(key[1])))
    for concurrency, workload in keys:
        these = [run for run in runs if run['concurrency'] == concurrency
                 and run['workload'] == workload]
        by_target = {}
        for target in targets:
            mine = [run for run in these if run['target'] == target]
            if not mine:
                continue
            entry = {'windows': len(mine)}
            for key in ('rps', 'p50_ms', 'p95_ms', 'p99_ms',
                        'zope_cpu_ms_per_request',
                        'store_cpu_ms_per_request',
                        'client_cpu_ms_per_request'):
                values = [run[key] for run in mine if run[key] is not None]
                entry[key] = statistics.median(values) if values else None
            entry['rps_min'] = min(run['rps'] for run in mine)
            entry['rps_max'] = max(run['rps'] for run in mine)
            for key in ('requests', 'non_200', 'conflicts', 'failed_attempts',
                        'retried_attempts'):
                entry[key] = sum(run[key] for run in mine)
            if any('lost_writes' in run for run in mine):
                entry['lost_writes'] = sum(
                    run.get('lost_writes', 0) for run in mine)
                entry['acknowledged_writes'] = sum(
                    run.get('acknowledged_writes', 0) for run in mine)
            ratios = [ratio for ratio in (relative(run, these)
                                          for run in mine)
                      if ratio is not None]
            if ratios:
                entry['vs_nosession'] = statistics.median(ratios)
                entry['vs_nosession_runs'] = ratios
            by_target[target] = entry
        for entry in by_target.values():
            for baseline in ('stock', 'mcdutils'):
                base = by_target.get(baseline, {}).get('vs_nosession')
                if base and 'vs_nosession' in entry:
                    entry['vs_' + baseline] = entry['vs_nosession'] / base
        summary.setdefault(str(concurrency), {})[workload] = by_target
    return summary


def table(results):
    """The summary as reStructuredText tables, one per concurrency."""
    lines = []
    for concurrency, workloads in results['summary'].items():
        lines += ['C=%s, %s threads, %s s windows, medians of %s '
                  'repetitions; x nosession: against the no-session windows '
                  'just before and after' % (
                      concurrency, results['settings']['threads'],
                      results['settings']['duration'],
                      results['settings']['repetitions']), '']
        header = ('workload', 'target', 'req/s', 'x nosession', 'x stock',
                  'p50 ms', 'p95 ms', 'p99 ms', 'non-200', 'conflicts',
                  'lost writes', 'Zope CPU ms/req', 'store CPU ms/req')
        rows = []
        for workload in WORKLOADS:
            targets = workloads.get(workload, {})
            for target in [name for name in TARGETS if name in targets]:
                entry = targets[target]
                lost = entry.get('lost_writes')
                if lost is not None:
                    lost = '%d of %d' % (lost, entry['acknowledged_writes'])
                rows.append((
                    workload, target, fmt(entry['rps'], 0),
                    fmt(entry.get('vs_nosession'), 2),
                    fmt(entry.get('vs_stock'), 2),
                    fmt(entry['p50_ms'], 1), fmt(entry['p95_ms'], 1),
                    fmt(entry['p99_ms'], 1), str(entry['non_200']),
                    str(entry['conflicts']), lost or '-',
                    fmt(entry['zope_cpu_ms_per_request'], 2),
                    fmt(entry['store_cpu_ms_per_request'], 2)))
        widths = [max(len(str(row[i])) for row in rows + [header])
                  for i in range(len(header))]
        rule = ' '.join('=' * width for width in widths)
        lines += [rule, ' '.join(h.ljust(w) for h, w in zip(
            header, widths)).rstrip(), rule]
        lines += [' '.join(str(c).ljust(w) for c, w in zip(row, widths))
                  .rstrip() for row in rows]
        lines += [rule, '']
    return '\n'.join(lines)


def fmt(value, digits):
    return '-' if value is None else '%.*f' % (digits, value)


def chart(results, path):
    """Bars of the median requests/s per workload, machine beside them."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    summary = results['summary']
    concurrency = max(summary, key=int)
    workloads = [w for w in WORKLOADS if w in summary[concurrency]]
    figure = plt.figure(figsize=(15, 3.2 * len(workloads) + 1))
    grid = figure.add_gridspec(len(workloads), 2, width_ratios=(3.2, 1))
    colors = {'nosession': '#999999', 'stock': '#d62728',
              'mcdutils': '#ff7f0e'}
    for row, workload in enumerate(workloads):
        axes = figure.add_subplot(grid[row, 0])
        entries = summary[concurrency][workload]
        names = [name for name in TARGETS if name in entries]
        rps = [entries[n]['rps'] for n in names]
        low = [entries[n]['rps'] - entries[n]['rps_min'] for n in names]
        high = [entries[n]['rps_max'] - entries[n]['rps'] for n in names]
        bars = axes.bar(
            [LABELS[n].replace(' (', '\n(') for n in names], rps,
            yerr=[low, high], capsize=3,
            color=[colors.get(n, '#1f77b4') for n in names])
        for bar, name in zip(bars, names):
            entry = entries[name]
            note = []
            if 'vs_nosession' in entry and name != 'nosession':
                note.append('%.2fx' % entry['vs_nosession'])
            if 'vs_stock' in entry and name not in ('nosession', 'stock'):
                note.append('%.2fx stock' % entry['vs_stock'])
            if entry['conflicts']:
                note.append('%d conflicts' % entry['conflicts'])
            if entry.get('lost_writes'):
                note.append('%d lost' % entry['lost_writes'])
            if entry['non_200']:
                note.append('%d non-200' % entry['non_200'])
            # Above the error bar, where the text does not cross it.
            axes.annotate('\n'.join(note), (bar.get_x() + bar.get_width() / 2,
                                            entry['rps_max']),
                          ha='center', va='bottom', fontsize=8,
                          xytext=(0, 3), textcoords='offset points')
        axes.set_ylabel('requests/s')
        axes.set_ylim(0, max(entries[n]['rps_max'] for n in names) * 1.35)
        axes.set_title('%s (C=%s)' % (WORKLOAD_TITLES[workload], concurrency),
                       fontsize=10, loc='left')
        axes.tick_params(axis='x', labelsize=8)
    info = figure.add_subplot(grid[:, 1])
    info.axis('off')
    info.text(0, 1, machine_text(results), va='top', fontsize=8,
              family='monospace')
    figure.suptitle(
        'Zope sessions: median requests/s over %d repetitions (bars: min-max);'
        ' x = median ratio to the no-session windows run just before and '
        'after' % results['settings']['repetitions'], fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def machine_text(results):
    info = results['machine']
    settings = results['settings']
    loads = [run['load_before'][0] for run in results['runs']]
    lines = [
        results['started'][:16].replace('T', ' '),
        '', 'Machine', info['cpu'][:34],
        '%s cores, %s GB' % (info['cores'], info['memory_gb']),
        info['platform'][:34], 'Python %s' % info['python'],
        'load (1 min) %.1f-%.1f' % (min(loads), max(loads)),
        '', 'Settings',
        'waitress threads %s' % settings['threads'],
        'browsers %s, in flight %s' % (
            settings['browsers'], ','.join(map(str, settings['concurrency']))),
        'warm-up %s s, window %s s' % (settings['warmup'],
                                       settings['duration']),
        'repetitions %s' % settings['repetitions'],
        '', 'Versions',
    ]
    lines += ['%s %s' % item for item in info['versions'].items() if item[1]]
    return '\n'.join(lines)


def measure(args, running):
    """The windows; a list of loadgen results.

    Every other target runs between two windows of ``nosession``
    (N A N B N C ... N), so that each is compared with the no-session
    throughput of the same minute; the order of the others rotates from
    one repetition to the next.
    """
    baseline, others = running[0], running[1:]
    runs = []
    windows = (len(args.concurrency) * len(args.workloads) * args.reps
               * (2 * len(others) + 1))
    print('%d windows of %ss + %ss warm-up' % (
        windows, args.duration, args.warmup), flush=True)
    for concurrency in args.concurrency:
        for workload in args.workloads:
            for repetition in range(args.reps):
                shift = repetition % max(1, len(others))
                sequence = [baseline]
                for target in others[shift:] + others[:shift]:
                    sequence += [target, baseline]
                for slot, target in enumerate(sequence):
                    load_before = os.getloadavg()
                    result = load_window({
                        'url': target.instance.url(),
                        'workload': workload,
                        'concurrency': concurrency,
                        'browsers': max(args.browsers, concurrency),
                        'warmup': args.warmup,
                        'duration': args.duration,
                        'zope_pid': target.pid,
                        'store_pid': target.store_pid,
                        'count_lost': target.name != 'nosession',
                    })
                    result.update(
                        target=target.name, workload=workload,
                        concurrency=concurrency, repetition=repetition,
                        slot=slot, load_before=load_before,
                        load_after=os.getloadavg())
                    runs.append(result)
                    print(progress(result), flush=True)
    return runs


def progress(result):
    return ('C=%-3s %-9s #%d %-10s %7.1f req/s  p95 %6.1f ms  CPU %.2f ms'
            '  non-200 %d  conflicts %d%s  load %.1f' % (
                result['concurrency'], result['workload'],
                result['repetition'], result['target'], result['rps'],
                result['p95_ms'] or 0,
                result['zope_cpu_ms_per_request'] or 0, result['non_200'],
                result['conflicts'],
                '  lost %s' % result['lost_writes']
                if 'lost_writes' in result else '',
                result['load_before'][0]))


def run(args):
    targets = args.targets
    started = datetime.datetime.now().isoformat(timespec='seconds')
    find_counters()
    running = []
    with Servers(targets) as stores:
        try:
            info = machine()
            if stores.postgresql:
                info['versions']['postgresql'] = postgresql_version(
                    stores.postgresql)
            for name in targets:
                print('starting %s ...' % name, flush=True)
                target = Target(name, args.threads, stores)
                running.append(target)
                target.start()
            runs = measure(args, running)
        finally:
            for target in running:
                target.stop()
    return {
        'started': started,
        'finished': datetime.datetime.now().isoformat(timespec='seconds'),
        'machine': info,
        'settings': {
            'threads': args.threads, 'browsers': args.browsers,
            'concurrency': args.concurrency, 'duration': args.duration,
            'warmup': args.warmup, 'repetitions': args.reps,
            'targets': targets, 'workloads': args.workloads,
        },
        'runs': runs,
        'summary': summarize(runs, targets),
    }


def names(choices):
    def parse(value):
        chosen = [name.strip() for name in value.split(',') if name.strip()]
        unknown = set(chosen) - set(choices)
        if unknown:
            raise argparse.ArgumentTypeError(
                'unknown: %s (choose from %s)' % (
                    ', '.join(sorted(unknown)), ', '.join(choices)))
        return chosen
    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: 1 repetition of 3 s windows')
    parser.add_argument('--targets', type=names(TARGETS),
                        default=list(TARGETS))
    parser.add_argument('--workloads', type=names(WORKLOADS),
                        default=list(WORKLOADS))
    parser.add_argument('--concurrency', default=[16],
                        type=lambda v: [int(c) for c in v.split(',')],
                        help='requests in flight, e.g. 4,16 (default 16)')
    parser.add_argument('--browsers', type=int, default=64,
                        help='virtual browsers (cookie jars), default 64')
    parser.add_argument('--threads', type=int, default=4,
                        help='waitress threads per instance, default 4')
    parser.add_argument('--duration', type=float, default=6,
                        help='measured seconds per window, default 6')
    parser.add_argument('--warmup', type=float, default=2,
                        help='seconds before each window, default 2')
    parser.add_argument('--reps', type=int, default=3,
                        help='interleaved repetitions, default 3')
    parser.add_argument('--name', help='results/NAME.json and NAME.png '
                        '(default: latest, or quick with --quick)')
    parser.add_argument('--redraw', metavar='JSON',
                        help='only redraw the chart and table of a result')
    args = parser.parse_args(argv)
    if args.redraw:
        with open(args.redraw) as f:
            results = json.load(f)
        base = os.path.splitext(args.redraw)[0]
    else:
        if args.quick:
            args.duration, args.warmup, args.reps = 2, 1, 1
        # The baseline comes first: measure() puts it between the others.
        args.targets = ['nosession'] + [
            name for name in args.targets if name != 'nosession']
        for tool, needed_by in (('redis-server', {'redis'}),
                                ('memcached', {'memcached', 'mcdutils'})):
            if needed_by & set(args.targets) and not shutil.which(tool):
                parser.error('%s is not installed' % tool)
        results = run(args)
        os.makedirs(RESULTS, exist_ok=True)
        base = os.path.join(
            RESULTS, args.name or ('quick' if args.quick else 'latest'))
        with open(base + '.json', 'w') as f:
            json.dump(results, f, indent=1, sort_keys=True)
    text = table(results)
    with open(base + '.rst', 'w') as f:
        f.write(text)
    chart(results, base + '.png')
    print(text)
    print('Results: %s.json, %s.png, %s.rst' % (base, base, base))


if __name__ == '__main__':
    main()
