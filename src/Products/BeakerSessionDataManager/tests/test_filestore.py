"""The file store reads Beaker's session files without Beaker's lock."""
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
import unittest

from beaker.cache import clsmap

from Products.BeakerSessionDataManager.filestore import FileStore
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

    def test_a_write_rewrites_the_file_in_place(self):
        store = self.make_store()
        store.merge('f' * 32, lambda record: {'a': 'x' * 1000})
        before = os.stat(store.path('f' * 32))
        store.merge('f' * 32, lambda record: {'a': 'y'})
        after = os.stat(store.path('f' * 32))
        self.assertEqual(after.st_ino, before.st_ino)
        self.assertLess(after.st_size, before.st_size)  # No old tail.
        self.assertEqual(store.load('f' * 32), {'a': 'y'})

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


class SharedFilesTests(unittest.TestCase):
    """Processes of their own read and write the files, through Beaker as
    Beaker's own middleware would, or through FileStore as another Zope
    would."""

    def setUp(self):
        import shutil
        import tempfile
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.store = FileStore(
            clsmap['file'], {'lock_dir': self.tmp + '/lock'},
            data_dir=self.tmp + '/data')
        self.session_id = secrets.token_hex(16)

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
        loaded = []
        reader = threading.Thread(
            target=lambda: loaded.append(self.store.load(self.session_id)),
            daemon=True)
        reader.start()
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

    # Sessions of a few hundred kilobytes: a write takes long enough for a
    # read without the lock to find it half done; a shorter one leaves the
    # end of a longer one behind it until the file is truncated.
    REWRITES = '''\
        print('ready', flush=True)
        for n in range(1, 301):
            payload = str(n) * (200000 if n & 1 else 100000)
            store.merge(%r, lambda record: {
                '_creation_time': 1.0, '_accessed_time': 2e9, 'n': n,
                'payload': payload})
        print('done', flush=True)
        '''

    @staticmethod
    def payload(n):
        return str(n) * (200000 if n & 1 else 100000)

    def first_record(self):
        self.store.merge(self.session_id, lambda record: {
            '_creation_time': 1.0, '_accessed_time': 2e9, 'n': 0})

    def test_reads_find_whole_records_while_this_store_rewrites_them(self):
        self.first_record()
        writer = self.file_store(self.REWRITES % self.session_id)
        seen = []
        while not seen or seen[-1] < 300:
            record = self.store.load(self.session_id)
            n = record['n']
            if n:
                self.assertEqual(record['payload'], self.payload(n))
            seen.append(n)
        self.assertEqual(seen, sorted(seen))
        self.assertEqual(writer.stdout.readline().strip(), 'done')

    def test_beaker_reads_whole_records_while_this_store_rewrites_them(self):
        self.first_record()
        reader = self.beaker('''\
            print('ready', flush=True)
            seen = []
            while not seen or seen[-1] < 300:
                session = Session({}, **options)
                n = session['n']
                if n and session['payload'] != str(n) * (
                        200000 if n & 1 else 100000):
                    print('torn at', n, flush=True)
                    sys.exit()
                seen.append(n)
            print('sorted' if seen == sorted(seen) else 'unsorted',
                  flush=True)
            ''')
        for n in range(1, 301):
            payload = self.payload(n)
            self.store.merge(self.session_id, lambda record: dict(
                record, n=n, payload=payload))
        self.assertEqual(reader.stdout.readline().strip(), 'sorted')
