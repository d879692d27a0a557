"""What the session costs a request, in CPU instructions.

The same in-process publishing as overhead.py, counted by valgrind's
callgrind instead of timed.  Instruction counts do not move with the
neighbours: the same code and versions give the same figures, within a
fraction of a per cent, on a quiet machine and on a busy one, so a change
of the hot path can be measured before and after on the machines this
project has.  (They do not see the kernel's share of system calls, nor
cache misses: a round trip to a store costs more than its count says.)

Each step is a Python Script that uses the session one step more than the
one before, published 100 times; its count is what it adds to the first
step, which only returns a string.  The ``floor`` column is the same
script with a session data manager that hands out a plain dict: what Zope
itself costs (the lazy ``SESSION``, restricted Python's checks), which no
session implementation can avoid::

    .venv-bench/bin/python benchmarks/instructions.py redis
    .venv-bench/bin/python benchmarks/instructions.py memory --requests 50

Needs valgrind (Debian's package ``valgrind``).  Takes one to two minutes.
"""
import argparse
import gc
import itertools
import os
import shutil
import subprocess
import sys
import tempfile

import bench
import overhead

from Products.BeakerSessionDataManager.tests import instance as zope_instance


def page(name):
    """The body of one of bench.py's workload scripts."""
    return bench.SCRIPTS[name][1] % {'session': 'context.REQUEST.SESSION'}


# The steps, after overhead.py's: (label, script body).
STEPS = overhead.STEPS + (
    ('read page', page('bench_read')),
    ('write page', page('bench_write')),
)
FLOOR_DATA = {'count': 1, 'page': 'page 1',
              'recent': ['item -2', 'item -1', 'item 0']}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('store', choices=bench.OURS)
    parser.add_argument('--requests', type=int, default=100,
                        help='requests per step, default 100')
    parser.add_argument('--inside', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        return count(args)
    for program in ('valgrind', 'callgrind_control'):
        if shutil.which(program) is None:
            sys.exit('%s is not installed (Debian: apt-get install '
                     'valgrind)' % program)
    with tempfile.TemporaryDirectory() as directory:
        counts = {}
        for variant in ('session', 'floor'):
            counts[variant] = run_under_callgrind(args, variant, directory)
        report(counts, args)


def run_under_callgrind(args, variant, directory):
    """Publish the steps in a process under callgrind; instructions per
    request of each step."""
    out = os.path.join(directory, variant)
    # A fixed hash seed: dict layouts, and so the counts, repeat.
    environ = dict(os.environ, PYTHONHASHSEED='0')
    result = subprocess.run(
        ['valgrind', '--tool=callgrind', '--instr-atstart=no',
         '--toggle-collect=dropwhile_next', '--collect-atstart=yes',
         '--callgrind-out-file=%s.%%p' % out, sys.executable,
         os.path.abspath(__file__), args.store,
         '--requests', str(args.requests), '--inside', variant],
        env=environ, capture_output=True, text=True)
    if result.returncode:
        sys.exit('the run under valgrind failed:\n%s'
                 % result.stderr[-3000:])
    totals = {}
    for name in os.listdir(directory):
        if name.startswith(variant + '.'):
            totals.update(dumped(os.path.join(directory, name)))
    empty = totals.pop('none')
    return {label: (totals['step_%d' % number] - empty) / args.requests
            for number, (label, _) in enumerate(STEPS)}


def dumped(path):
    """{dump name: instructions} of a callgrind output file."""
    trigger = summary = None
    with open(path) as f:
        for line in f:
            if line.startswith('desc: Trigger: dump '):
                trigger = line.split()[-1]
            elif line.startswith('summary: '):
                summary = int(line.split()[1])
    return {trigger: summary} if trigger and summary is not None else {}


def count(args):
    """Inside valgrind: set up an instance, publish each step, and let
    callgrind count each step's requests only."""
    bench.find_counters()
    with bench.Servers([args.store]) as servers:
        # No access-time write in the middle of the reads: one in 100
        # requests would make the counts move from one run to the next
        # (the granularity must be shorter than the timeout).
        target = bench.Target(args.store, 1, servers, {
            'session.write_granularity': str(24 * 3600),
            'session.timeout': str(2 * 24 * 3600)})
        try:
            target.instance.setup(zope_instance.BEAKER_SESSION_DATA_MANAGER,
                                  *overhead.step_scripts(STEPS))
            publisher = overhead.Publisher(target.instance.etc('zope.conf'))
            if args.inside == 'floor':
                hand_out_plain_dicts()
            paths = ['step_%d' % number for number in range(len(STEPS))]
            publisher.get(paths[-1])  # The write page: session and cookie.
            for path in paths:
                for _ in range(20):
                    publisher.get(path)  # compile, fill caches
            # A collection of the whole heap in one step's window and not
            # in another's would count for a fraction of each request:
            # keep the heap of the start out of the collector's sight.
            gc.collect()
            gc.freeze()
            callgrind('--instr=on')
            for path in ['none'] + paths:
                gc.collect()
                callgrind('--zero')
                for _ in range(0 if path == 'none' else args.requests):
                    publisher.get(path)
                callgrind('--dump=' + path)
            callgrind('--instr=off')
        finally:
            target.stop()


def hand_out_plain_dicts():
    """The floor: ``SESSION`` is a plain dict, made for each request."""
    from Products.BeakerSessionDataManager.sessiondata import \
        BeakerSessionDataManager

    def getSessionData(self, create=1):
        return dict(FLOOR_DATA)

    BeakerSessionDataManager.getSessionData = getSessionData


def callgrind(option):
    """Tell callgrind, which runs this process, to do something.

    callgrind_control leaves a command for valgrind, which takes it while
    this process runs Python code: so wait busily, not in a system call.
    Once instructions are counted, wait inside ``itertools.dropwhile``,
    which the run leaves out of the counts (``--toggle-collect``): how long
    the wait takes, which varies, is not in the figures.  (Callgrind sees
    that function's entry only when it counts already: switching counting
    on waits outside it.)
    """
    process = subprocess.Popen(
        ['callgrind_control', option, str(os.getpid())],
        stdout=subprocess.DEVNULL)

    def waiting(_):
        return process.poll() is None

    if option.startswith('--instr'):
        while waiting(None):
            pass
    else:
        next(itertools.dropwhile(waiting, itertools.repeat(None)))


def report(counts, args):
    session, floor = counts['session'], counts['floor']
    print('Instructions per request (callgrind, %s store, %d requests per '
          'step), added to a script that only returns a string (%d):'
          % (args.store, args.requests, session['nothing']))
    print('%-12s %10s %10s %10s' % ('step', 'session', 'floor', 'ours'))
    for label, _ in STEPS[1:]:
        added = session[label] - session['nothing']
        zope = floor[label] - floor['nothing']
        print('%-12s %+10d %+10d %+10d' % (label, added, zope, added - zope))
    print('floor: the session data manager hands out a plain dict (what '
          'Zope costs); ours: the difference')


if __name__ == '__main__':
    sys.exit(main())
