"""The file store: Beaker's session files, read and written under locks
of their own besides Beaker's."""
import errno
import fcntl
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

from beaker.cache import clsmap

from Products.BeakerSessionDataManager import namespaces
from Products.BeakerSessionDataManager.filestore import CHUNK
from Products.BeakerSessionDataManager.filestore import IN_PLACE_LIMIT
from Products.BeakerSessionDataManager.filestore import FileStore
from Products.BeakerSessionDataManager.filestore import read_whole
from Products.BeakerSessionDataManager.filestore import unlock_and_close
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests.test_store import SECRET
from Products.BeakerSessionDataManager.tests.test_store import StoreTests


class FileStoreTests(StoreTests):
    """Everything the Beaker file store does, FileStore does too."""

    def make_store(self, **kw):
        return FileStore(
            clsmap['file'], {'lock_dir': self.tmp + '/lock'},
            data_dir=self.tmp + '/data', **kw)

    def test_files_are_named_as_beaker_names_them(self):
        store = self.make_store()
        for session_id in [secrets.token_hex(16) for _ in range(20)] + [
                'a', 'ab', 'a.b', '../x']:
            self.assertEqual(store.path(session_id),
                             store._namespace(session_id).file)

    def test_locks_are_beakers(self):
        store = self.make_store()
        for session_id in [secrets.token_hex(16) for _ in range(20)] + [
                'a', 'a.b']:
            self.assertEqual(store.lock_path(session_id),
                             store._namespace(session_id).access_lock.filename)

    def test_deleting_an_unknown_session_writes_no_file(self):
        store = self.make_store()
        store.delete('e' * 32)
        self.assertFalse(os.path.exists(store.path('e' * 32)))

    def test_a_file_without_a_record_is_no_session(self):
        store = self.make_store()
        store.merge('d' * 32, lambda record: {'a': 1})
        store.delete('d' * 32)  # Beaker leaves the file, empty.
        self.assertTrue(os.path.exists(store.path('d' * 32)))
        self.assertIsNone(store.load('d' * 32))

    def test_a_file_of_a_page_is_rewritten_in_place(self):
        store = self.make_store()
        store.merge('f' * 32, lambda record: {'a': 'x' * 1000})
        before = os.stat(store.path('f' * 32))
        store.merge('f' * 32, lambda record: {'a': 'y'})
        after = os.stat(store.path('f' * 32))
        self.assertEqual(after.st_ino, before.st_ino)
        self.assertLess(after.st_size, before.st_size)  # No old tail.
        self.assertEqual(store.load('f' * 32), {'a': 'y'})

    def test_files_are_read_whole(self):
        path = os.path.join(self.tmp, 'file')
        for size in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK):
            data = os.urandom(size)
            with open(path, 'wb') as f:
                f.write(data)
            descriptor = os.open(path, os.O_RDONLY)
            try:
                self.assertEqual(read_whole(descriptor), data)
            finally:
                os.close(descriptor)

    def test_a_larger_file_is_replaced_whole(self):
        store = self.make_store()
        store.merge('f' * 32, lambda record: {'a': 'x'})
        before = os.stat(store.path('f' * 32))
        store.merge('f' * 32, lambda record: {'a': 'y' * IN_PLACE_LIMIT})
        after = os.stat(store.path('f' * 32))
        self.assertNotEqual(after.st_ino, before.st_ino)
        self.assertEqual(store.load('f' * 32), {'a': 'y' * IN_PLACE_LIMIT})

    def test_a_write_that_does_not_fit_leaves_the_old_file_alone(self):
        # A full disk (ENOSPC), here a file size limit (EFBIG) in a process
        # of its own: the error, the old file whole, and no half-written
        # new one keeping disk space.
        store = self.make_store()
        store.merge('f' * 32, lambda record: {'a': 'x' * IN_PLACE_LIMIT})
        code = textwrap.dedent('''\
            import resource, signal, sys
            from beaker.cache import clsmap
            from Products.BeakerSessionDataManager.filestore import FileStore
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (50000, 50000))
            store = FileStore(clsmap['file'], {'lock_dir': sys.argv[1]},
                              data_dir=sys.argv[2])
            try:
                store.merge('f' * 32, lambda record: {'a': 'y' * 100000})
            except OSError as exc:
                print(exc.errno)
            ''')
        process = subprocess.run(
            [sys.executable, '-c', code, self.tmp + '/lock',
             self.tmp + '/data'], check=True, capture_output=True, text=True)
        self.assertEqual(process.stdout.strip(), str(errno.EFBIG))
        self.assertEqual(store.load('f' * 32), {'a': 'x' * IN_PLACE_LIMIT})
        self.assertEqual(os.listdir(os.path.dirname(store.path('f' * 32))),
                         ['f' * 32 + '.cache'])

    def test_a_file_cut_short_is_no_session_and_is_written_afresh(self):
        # What a crash in the middle of a write can leave behind.
        store = self.make_store()
        store.merge('f' * 32, lambda record: {'a': 'x' * 1000})
        os.truncate(store.path('f' * 32), 500)
        self.assertIsNone(store.load('f' * 32))
        seen = []
        store.merge('f' * 32, lambda record: seen.append(record) or {'b': 2})
        self.assertEqual(seen, [None])
        self.assertEqual(store.load('f' * 32), {'b': 2})


class FilesTestCase(unittest.TestCase):
    """A file store in a directory of its own, and a session id."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.store = FileStore(
            clsmap['file'], {'lock_dir': self.tmp + '/lock'},
            data_dir=self.tmp + '/data')
        self.session_id = secrets.token_hex(16)

    def loading(self):
        """A thread that loads the session into the list it returns too."""
        loaded = []
        thread = threading.Thread(
            target=lambda: loaded.append(self.store.load(self.session_id)),
            daemon=True)
        thread.start()
        return thread, loaded


class LockTests(FilesTestCase):
    """What a writer finds once it has waited for a lock."""

    def setUp(self):
        super().setUp()
        self.store.merge(self.session_id, lambda record: {'n': 1})

    def holding(self, path, blocking=True):
        descriptor = os.open(path, os.O_RDONLY)
        fcntl.flock(descriptor, fcntl.LOCK_EX | (
            0 if blocking else fcntl.LOCK_NB))
        return descriptor

    def merging(self, apply):
        thread = threading.Thread(
            target=self.store.merge, args=(self.session_id, apply),
            daemon=True)
        thread.start()
        self.addCleanup(thread.join, 30)
        return thread

    def test_a_read_waits_for_a_write_of_this_store(self):
        # A write in place holds the session file so: a read in the middle
        # would find part of it.
        writer = self.holding(self.store.path(self.session_id))
        reader, loaded = self.loading()
        reader.join(0.2)
        self.assertEqual(loaded, [])
        os.close(writer)
        reader.join(30)
        self.assertEqual(loaded, [{'n': 1}])

    def test_a_lock_file_removed_while_waiting_is_made_again(self):
        # The cleanup removes the lock file of a session it removed,
        # holding it; a writer that waited for it must then lock the new
        # file at the path, the one Beaker's readers lock.
        lock_path = self.store.lock_path(self.session_id)
        cleanup = self.holding(lock_path)
        inside, leave = threading.Event(), threading.Event()

        def apply(record):
            inside.set()
            leave.wait(30)
            return {'n': 2}

        self.merging(apply)
        self.addCleanup(leave.set)  # Before the cleanup that joins it.
        time.sleep(0.2)  # Not a timing: without it, the test proves less.
        self.assertFalse(inside.is_set())
        os.remove(lock_path)
        os.close(cleanup)
        self.assertTrue(inside.wait(30))
        with open(lock_path) as reader:
            with self.assertRaises(BlockingIOError):
                fcntl.flock(reader, fcntl.LOCK_SH | fcntl.LOCK_NB)

    def test_a_session_file_removed_while_waiting_is_written_afresh(self):
        # A reader of ours holds the file; meanwhile the file goes (a
        # writer that did not wait for Beaker's lock): the write must not
        # go into the file that is gone.
        reader = self.holding(self.store.path(self.session_id))
        thread = self.merging(lambda record: dict(record or {}, n=2))
        time.sleep(0.2)  # Not a timing: without it, the test proves less.
        os.remove(self.store.path(self.session_id))
        os.close(reader)
        thread.join(30)
        self.assertEqual(self.store.load(self.session_id), {'n': 2})

    def test_a_forked_child_keeps_no_lock(self):
        descriptor = self.holding(self.store.path(self.session_id))
        child = os.fork()
        if not child:  # pragma: no cover - the child only waits
            time.sleep(30)
            os._exit(0)
        self.addCleanup(os.waitpid, child, 0)
        self.addCleanup(os.kill, child, signal.SIGKILL)
        unlock_and_close(descriptor)
        # The child has the file open still, but not locked.
        path = self.store.path(self.session_id)
        os.close(self.holding(path, blocking=False))

    def as_another_user(self, code):
        """Run ``code`` with ``store`` and ``session_id`` (ours) in a
        process of its own, as user nobody (started as root, or through
        sudo if we are not: ``servers.as_root``), with the directories
        and the lock file open to it; its output."""
        setup = textwrap.dedent('''\
            import os, sys
            from beaker.cache import clsmap
            from Products.BeakerSessionDataManager.filestore import FileStore
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            store = FileStore(clsmap['file'], {'lock_dir': sys.argv[1]},
                              data_dir=sys.argv[2])
            session_id = sys.argv[3]
            ''')
        for root, directories, _ in os.walk(self.tmp):
            for name in directories:
                os.chmod(os.path.join(root, name), 0o777)
        os.chmod(self.tmp, 0o777)
        os.chmod(self.store.lock_path(self.session_id), 0o666)
        return subprocess.run(
            servers.as_root([sys.executable, '-c', setup + code,
                             self.tmp + '/lock', self.tmp + '/data',
                             self.session_id]), check=True,
            capture_output=True, text=True).stdout

    def test_a_file_of_another_user_is_replaced(self):
        # Its directory is shared, its file is not ours to write: 0644,
        # or for root, written by another account.
        path = self.store.path(self.session_id)
        os.chmod(path, 0o444)
        self.as_another_user(
            "store.merge(session_id, lambda record: dict(record, n=2))")
        self.assertEqual(self.store.load(self.session_id), {'n': 2})

    def test_a_file_this_user_cannot_read_is_an_error(self):
        # Not an empty session, which a write would then fail to replace:
        # Zope answers 503 (SessionStoreError) and logs why.
        os.chmod(self.store.path(self.session_id), 0o600)
        output = self.as_another_user(textwrap.dedent('''\
            for operation in (store.load, store.delete):
                try:
                    operation(session_id)
                except PermissionError:
                    print('PermissionError')
            '''))
        self.assertEqual(output.split(), ['PermissionError'] * 2)
        self.assertEqual(self.store.load(self.session_id)['n'], 1)


class SharedFilesTests(FilesTestCase):
    """Processes of their own read and write the files, through Beaker as
    Beaker's own middleware would, or through FileStore as another Zope
    would."""

    def beaker(self, code):
        """Run ``code`` in a process with Beaker's session of our id as
        ``session``; it prints 'ready' when it is."""
        return self.process(textwrap.dedent('''\
            import sys
            from beaker.session import Session
            options = dict(id=%r, use_cookies=False, type='file',
                           data_dir=%r, lock_dir=%r, secret=%r)
            session = Session({}, **options)
            ''') % (self.session_id, self.tmp + '/data', self.tmp + '/lock',
                    SECRET) + textwrap.dedent(code))

    def file_store(self, code):
        """Run ``code`` in a process with a FileStore on our files as
        ``store``; it prints 'ready' when it is."""
        return self.process(textwrap.dedent('''\
            import sys
            from beaker.cache import clsmap
            from Products.BeakerSessionDataManager.filestore import FileStore
            store = FileStore(clsmap['file'], {'lock_dir': %r},
                              data_dir=%r)
            ''') % (self.tmp + '/lock', self.tmp + '/data')
            + textwrap.dedent(code))

    def process(self, program):
        process = subprocess.Popen(
            [sys.executable, '-c', program], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        self.assertEqual(process.stdout.readline().strip(), 'ready')
        return process

    def holding_the_lock(self, then=''):
        """A Beaker process that takes the session's lock, says 'ready',
        and waits for ``go`` to run ``then``, still holding it."""
        self.store.merge(self.session_id, lambda record: {
            '_creation_time': 1.0, '_accessed_time': time.time(), 'n': 1})
        return self.beaker(textwrap.dedent('''\
            session.namespace.acquire_write_lock()
            print('ready', flush=True)
            sys.stdin.readline()
            ''') + textwrap.dedent(then))

    @staticmethod
    def go(process):
        process.stdin.write('go\n')
        process.stdin.flush()

    def test_a_read_does_not_wait_for_a_writer(self):
        writer = self.holding_the_lock()
        reader, loaded = self.loading()
        # Not a timing: through Beaker's lock the read would wait until
        # the writer lets go, which it does only when told below.
        reader.join(30)
        self.assertEqual(loaded and loaded[0]['n'], 1)
        self.go(writer)

    def test_a_write_waits_for_beakers_lock_and_merges_onto_its_write(self):
        writer = self.holding_the_lock('''\
            session['theirs'] = 1
            session.save()
            session.namespace.release_write_lock()
            print('saved', flush=True)
            ''')
        merging = threading.Thread(target=self.store.merge, daemon=True, args=(
            self.session_id, lambda record: dict(record, ours=1)))
        merging.start()
        merging.join(1)
        self.assertTrue(merging.is_alive())  # Waiting for Beaker's lock.
        self.go(writer)
        self.assertEqual(writer.stdout.readline().strip(), 'saved')
        merging.join(30)
        self.assertFalse(merging.is_alive())
        record = self.store.load(self.session_id)
        self.assertEqual((record['n'], record['theirs'], record['ours']),
                         (1, 1, 1))

    def test_a_lock_kept_too_long_is_an_error_not_a_hang(self):
        # A process that holds the lock and never lets go (stopped: ^Z, a
        # debugger) held every request of the session, for good.
        writer = self.holding_the_lock()
        os.kill(writer.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, writer.pid, signal.SIGCONT)
        self.addCleanup(setattr, namespaces, 'LOCK_WAIT', namespaces.LOCK_WAIT)
        namespaces.LOCK_WAIT = 0.3
        started = time.monotonic()
        with self.assertRaisesRegex(namespaces.LockTimeout,
                                    'locked by another writer for too long'):
            self.store.merge(self.session_id,
                             lambda record: dict(record, ours=1))
        self.assertLess(time.monotonic() - started, 5)
        # Reads do not wait for Beaker's lock; nothing was written.
        self.assertNotIn('ours', self.store.load(self.session_id))
        # A writer of this store stuck in the middle of a write holds the
        # session file: reads give up too.
        descriptor = os.open(self.store.path(self.session_id), os.O_RDONLY)
        self.addCleanup(os.close, descriptor)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        with self.assertRaises(namespaces.LockTimeout):
            self.store.load(self.session_id)

    def test_reads_find_whole_records_while_beaker_rewrites_them(self):
        writer = self.beaker('''\
            session['n'] = 0
            session.save()
            print('ready', flush=True)
            for n in range(1, 301):
                session['n'] = n
                session['payload'] = str(n) * 200000
                session.save()
            print('done', flush=True)
            ''')
        seen = []
        while not seen or seen[-1] < 300:
            record = self.store.load(self.session_id)
            n = record['n']
            if n:
                self.assertEqual(record['payload'], str(n) * 200000)
            seen.append(n)
        self.assertEqual(seen, sorted(seen))
        self.assertEqual(writer.stdout.readline().strip(), 'done')

    # Payloads by the parity of the write: a shorter one leaves the end of
    # a longer one behind it until the file is truncated.  Sessions that
    # fit in a page are rewritten in place; sessions of a few hundred
    # kilobytes are replaced, and take a write long enough for a read
    # without the lock to find it half done.
    SIZES = {'in place': (1500, 600), 'replaced': (200000, 100000)}
    REWRITES = '''\
        print('ready', flush=True)
        for n in range(1, 301):
            payload = str(n %% 10) * (%d if n & 1 else %d)
            store.merge(%r, lambda record: {
                '_creation_time': 1.0, '_accessed_time': 2e9, 'n': n,
                'payload': payload})
        print('done', flush=True)
        '''

    @staticmethod
    def payload(n, sizes):
        return str(n % 10) * (sizes[0] if n & 1 else sizes[1])

    def first_record(self):
        self.store.merge(self.session_id, lambda record: {
            '_creation_time': 1.0, '_accessed_time': 2e9, 'n': 0})

    def test_reads_find_whole_records_while_this_store_rewrites_them(self):
        for how, sizes in self.SIZES.items():
            with self.subTest(how):
                self.first_record()
                writer = self.file_store(
                    self.REWRITES % (sizes + (self.session_id,)))
                seen = []
                while not seen or seen[-1] < 300:
                    record = self.store.load(self.session_id)
                    n = record['n']
                    if n:
                        self.assertEqual(record['payload'],
                                         self.payload(n, sizes))
                    seen.append(n)
                self.assertEqual(seen, sorted(seen))
                self.assertEqual(writer.stdout.readline().strip(), 'done')

    def test_beaker_reads_whole_records_while_this_store_rewrites_them(self):
        for how, sizes in self.SIZES.items():
            with self.subTest(how):
                self.first_record()
                reader = self.beaker('''\
                    print('ready', flush=True)
                    seen = []
                    while not seen or seen[-1] < 300:
                        session = Session({}, **options)
                        n = session['n']
                        if n and session['payload'] != str(n %% 10) * (
                                %d if n & 1 else %d):
                            print('torn at', n, flush=True)
                            sys.exit()
                        seen.append(n)
                    print('sorted' if seen == sorted(seen) else 'unsorted',
                          flush=True)
                    ''' % sizes)
                for n in range(1, 301):
                    payload = self.payload(n, sizes)
                    self.store.merge(self.session_id, lambda record: dict(
                        record, n=n, payload=payload))
                self.assertEqual(reader.stdout.readline().strip(), 'sorted')

    def test_a_writer_killed_in_the_middle_leaves_a_whole_file(self):
        # Killed (the OOM killer, a supervisor) at any moment of a write in
        # place, a Zope leaves the old session or the new one; the two
        # differ in length, so the file grows and shrinks.
        path = self.store.path(self.session_id)
        whole = ('x' * 600, 'y' * 1000)
        self.store.merge(self.session_id, lambda record: {
            '_accessed_time': 2e9, 'a': whole[0], 'b': whole[0]})
        in_place = os.stat(path).st_ino
        for _ in range(10):
            writer = self.file_store('''\
                records = [{'_accessed_time': 2e9, 'a': value, 'b': value}
                           for value in %r]
                print('ready', flush=True)
                n = 0
                while True:
                    n += 1
                    store.merge(%r, lambda record: records[n & 1])
                ''' % (whole, self.session_id))
            written = os.stat(path).st_mtime_ns
            while os.stat(path).st_mtime_ns == written:
                pass  # Until it writes.
            time.sleep(random.uniform(0, 0.002))
            writer.kill()
            writer.wait()
            record = self.store.load(self.session_id)
            self.assertIn(record['a'], whole)
            self.assertEqual(record['b'], record['a'])
        self.assertEqual(os.stat(path).st_ino, in_place)
