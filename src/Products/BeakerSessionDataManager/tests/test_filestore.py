"""The file store reads Beaker's session files without Beaker's lock."""
import errno
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
import unittest
from unittest import mock

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

    def test_a_filesystem_without_preallocation_still_writes(self):
        # posix_fallocate fails as on a filesystem that cannot preallocate.
        def refuse(descriptor, offset, length):
            raise OSError(errno.EOPNOTSUPP, 'Operation not supported')

        store = self.make_store()
        store.merge('f' * 32, lambda record: {'a': 1})
        with mock.patch('os.posix_fallocate', refuse):
            store.merge('f' * 32, lambda record: dict(record, b=2))
        self.assertEqual(store.load('f' * 32), {'a': 1, 'b': 2})


class LockFreeReadTests(unittest.TestCase):
    """Processes of their own write through Beaker, as another Zope or
    Beaker's own middleware would."""

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
        program = textwrap.dedent('''\
            import sys
            from beaker.session import Session
            session = Session({}, id=%r, use_cookies=False, type='file',
                              data_dir=%r, lock_dir=%r, secret=%r)
            ''') % (self.session_id, self.tmp + '/data', self.tmp + '/lock',
                    SECRET) + textwrap.dedent(code)
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
