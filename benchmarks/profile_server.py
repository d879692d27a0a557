"""Profile one target of bench.py under load with py-spy.

Starts the target's instance as bench.py does, drives it with loadgen.py and
samples the Zope process meanwhile with ``py-spy record --gil`` (only the
thread holding the GIL: where the CPU goes).  Prints the share of samples
spent in the session machinery (inclusive) and the busiest functions
(self), and keeps the collapsed stacks for flame graph tools::

    .venv-bench/bin/python benchmarks/profile_server.py redis write
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

import bench


# Frames counted as "the session machinery".
INTERESTING = ('BeakerSessionDataManager', '/beaker/', '/redis/',
               'memcache', 'transaction/_', 'sqlalchemy', 'Transience',
               'Products/Sessions', 'mcdutils')


def parse(path):
    """py-spy's collapsed stacks: [(frames, count)]."""
    stacks = []
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip('\n').rpartition(' ')
            stacks.append((stack.split(';'), int(count)))
    return stacks


def report(stacks, top=30):
    total = sum(count for _, count in stacks)
    inclusive = collections.Counter()
    own = collections.Counter()
    for frames, count in stacks:
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = ['%d samples' % total, '',
             'Inclusive, session machinery (% of samples):']
    shown = [(frame, count) for frame, count in inclusive.most_common()
             if any(word in frame for word in INTERESTING)]
    for frame, count in shown[:top]:
        lines.append('%5.1f%%  %s' % (100.0 * count / total, frame))
    lines += ['', 'Self (% of samples):']
    for frame, count in own.most_common(top):
        lines.append('%5.1f%%  %s' % (100.0 * count / total, frame))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('target', choices=bench.TARGETS)
    parser.add_argument('workload', choices=bench.WORKLOADS)
    parser.add_argument('--seconds', type=float, default=10)
    parser.add_argument('--concurrency', type=int, default=16)
    parser.add_argument('--threads', type=int, default=4)
    parser.add_argument('--output', help='collapsed stacks file (default: '
                        'results/profile-TARGET-WORKLOAD.txt)')
    args = parser.parse_args(argv)
    output = args.output or os.path.join(
        bench.RESULTS, 'profile-%s-%s.txt' % (args.target, args.workload))
    pyspy = os.path.join(os.path.dirname(sys.executable), 'py-spy')
    bench.find_counters()
    with bench.Servers([args.target]) as servers:
        target = bench.Target(args.target, args.threads, servers)
        try:
            target.start()
            spec = {
                'url': target.instance.url(), 'workload': args.workload,
                'concurrency': args.concurrency, 'browsers': 64,
                'warmup': 3, 'duration': args.seconds + 2,
                'zope_pid': target.pid, 'store_pid': target.store_pid,
                'count_lost': False,
            }
            with tempfile.NamedTemporaryFile('w', suffix='.json') as f:
                json.dump(spec, f)
                f.flush()
                load = subprocess.Popen(
                    [sys.executable, os.path.join(bench.HERE, 'loadgen.py'),
                     f.name], stdout=subprocess.PIPE, text=True)
                time.sleep(spec['warmup'] + 1)
                subprocess.run(
                    [pyspy, 'record', '--gil', '--format', 'raw', '--rate',
                     '250', '--duration', str(int(args.seconds)),
                     '--pid', str(target.pid), '--output', output],
                    check=True, stdout=subprocess.DEVNULL)
                result = json.loads(load.communicate()[0])
        finally:
            target.stop()
    print('%.1f req/s, Zope CPU %.2f ms/request' % (
        result['rps'], result['zope_cpu_ms_per_request']))
    print(report(parse(output)))
    print('\nCollapsed stacks: %s' % output)


if __name__ == '__main__':
    main()
