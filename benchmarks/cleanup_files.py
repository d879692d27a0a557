"""Time ``beaker-sessions cleanup`` over 100,000 expired file sessions.

Not part of the test suite.  Run it from a checkout whose virtualenv has the
product installed::

    .venv/bin/python benchmarks/cleanup_files.py [--sessions 100000]

It writes the expired sessions (and a few live ones) in a temporary
directory through the product's own file store, makes them look untouched
for two hours, runs the installed ``beaker-sessions cleanup`` on them as
cron would, checks that exactly the expired ones are gone, and prints the
time the cleanup took.
"""
import argparse
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager.cleanup import SESSION_FILE
from Products.BeakerSessionDataManager.cleanup import walk


SECRET = 'benchmark-secret-0123456789-abcdefghijklmnop'
TIMEOUT = 1200
LIVE = 100
SCRIPT = os.path.join(os.path.dirname(sys.executable), 'beaker-sessions')


def settings(directory):
    return {'session.type': 'file', 'session.secret': SECRET,
            'session.timeout': str(TIMEOUT),
            'session.data_dir': os.path.join(directory, 'data'),
            'session.lock_dir': os.path.join(directory, 'lock')}


def write_sessions(job):
    """Write sessions ``first`` to ``last`` (as numbered ids) last
    accessed at ``accessed``."""
    directory, first, last, accessed = job
    store = config.SessionConfiguration(settings(directory)).store
    for number in range(first, last):
        record = {'_creation_time': accessed, '_accessed_time': accessed,
                  'cart': ['book', 'pen'], 'visits': number % 17}
        store.merge('%032x' % number, lambda old: record)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sessions', type=int, default=100000,
                        help='expired sessions to write (default 100000)')
    parser.add_argument('--keep', action='store_true',
                        help='keep the temporary directory')
    arguments = parser.parse_args()
    expired = arguments.sessions
    directory = tempfile.mkdtemp(prefix='beaker-cleanup-bench-')
    try:
        started = time.time()
        long_ago = started - 2 * 3600
        chunk = 5000
        jobs = [(directory, first, min(first + chunk, expired), long_ago)
                for first in range(0, expired, chunk)]
        with multiprocessing.Pool() as pool:
            pool.map(write_sessions, jobs)
        write_sessions((directory, expired, expired + LIVE, time.time()))
        # Untouched for two hours, as far as the file system knows too.
        data_root = os.path.join(directory, 'data', 'container_file')
        for entry in walk(data_root):
            match = SESSION_FILE(entry.name)
            if match and int(match.group(1), 16) < expired:
                os.utime(entry.path, (long_ago, long_ago))
        print('Wrote %d expired and %d live file sessions in %.0f s.'
              % (expired, LIVE, time.time() - started))

        command = [SCRIPT, 'cleanup'] + [
            argument for name, value in settings(directory).items()
            for argument in ('-o', '%s=%s' % (name, value))]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime
               + after.ru_stime - before.ru_stime)
        print(result.stdout.strip())
        if result.returncode:
            sys.exit('beaker-sessions failed: %s' % result.stderr)

        left = sorted(int(SESSION_FILE(entry.name).group(1), 16)
                      for entry in walk(data_root)
                      if SESSION_FILE(entry.name))
        if left != list(range(expired, expired + LIVE)):
            sys.exit('Wrong sessions left: %d files' % len(left))
        # The CPU time says more than the wall time on a busy machine.
        print('beaker-sessions cleanup removed %d expired file sessions and '
              'kept %d live ones in %.1f s (%.0f sessions/s, process start '
              'included), using %.1f s of CPU; on %s with %d CPUs (load '
              'average %.1f), Python %s.'
              % (expired, LIVE, seconds, expired / seconds, cpu,
                 platform.machine(), os.cpu_count(), os.getloadavg()[0],
                 platform.python_version()))
    finally:
        if arguments.keep:
            print('Kept %s' % directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == '__main__':
    main()
