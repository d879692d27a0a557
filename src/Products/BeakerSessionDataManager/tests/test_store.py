"""Session records in Beaker's own format, on the stores that need no
server."""
import shutil
import tempfile
import unittest

from beaker.cache import clsmap
from beaker.session import Session

from Products.BeakerSessionDataManager.store import DAMAGED
from Products.BeakerSessionDataManager.store import BeakerStore


SESSION_ID = 'c' * 32
SECRET = 'Qv3s9dJk2LmN8pRt5WxYz1AbCdEfGhIjKl'


class StoreTests(unittest.TestCase):

    store_type = 'file'

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def make_store(self, **kw):
        return BeakerStore(
            clsmap[self.store_type], {'lock_dir': self.tmp + '/lock'},
            data_dir=self.tmp + '/data', **kw)

    def beaker_options(self, **kw):
        options = dict(type=self.store_type, data_dir=self.tmp + '/data',
                       lock_dir=self.tmp + '/lock', secret=SECRET)
        options.update(kw)
        return options

    def test_missing_record(self):
        self.assertIsNone(self.make_store().load(SESSION_ID))

    def test_merge_load_delete(self):
        store = self.make_store()
        store.merge(SESSION_ID, lambda record: {'a': 1})
        store.merge(SESSION_ID, lambda record: dict(record, b=2))
        self.assertEqual(store.load(SESSION_ID), {'a': 1, 'b': 2})
        store.delete(SESSION_ID)
        self.assertIsNone(store.load(SESSION_ID))
        store.delete(SESSION_ID)

    def test_records_are_beaker_sessions(self):
        """What we write, Beaker's own Session reads, and vice versa."""
        store = self.make_store()
        store.merge(SESSION_ID, lambda record: {
            '_creation_time': 1.0, '_accessed_time': 2.0, 'ours': 1})
        session = Session({}, id=SESSION_ID, use_cookies=False,
                          **self.beaker_options())
        self.assertEqual(session['ours'], 1)
        session['theirs'] = 2
        session.save()
        self.assertEqual(store.load(SESSION_ID)['theirs'], 2)

    def test_encrypted_records(self):
        store = self.make_store(encrypt_key='k' * 32, validate_key=SECRET)
        store.merge(SESSION_ID, lambda record: {'card': '4111'})
        self.assertEqual(store.load(SESSION_ID), {'card': '4111'})
        namespace = store._namespace(SESSION_ID)
        namespace.acquire_read_lock()
        try:
            raw = namespace['session']
        finally:
            namespace.release_read_lock()
        self.assertNotIn('4111', str(raw))
        session = Session({}, id=SESSION_ID, use_cookies=False,
                          **self.beaker_options(encrypt_key='k' * 32,
                                                validate_key=SECRET))
        self.assertEqual(session['card'], '4111')

    def test_json_serializer(self):
        store = self.make_store(serializer='json')
        store.merge(SESSION_ID, lambda record: {'a': [1, 2]})
        self.assertEqual(store.load(SESSION_ID), {'a': [1, 2]})

    def test_unreadable_record_is_no_session(self):
        store = self.make_store()
        store.merge(SESSION_ID, lambda record: {'a': 1})
        self.make_store(serializer='json').merge(
            'd' * 32, lambda record: {'a': 1})
        self.assertIsNone(self.make_store(serializer='json').load(SESSION_ID))


class DBMStoreTests(StoreTests):
    store_type = 'dbm'


class MemoryStoreTests(StoreTests):
    store_type = 'memory'


class RemoveIfTests(unittest.TestCase):
    """``remove_if``, which the cleanup uses, on what it may find."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.store = BeakerStore(
            clsmap['file'], {'lock_dir': self.tmp + '/lock'},
            data_dir=self.tmp + '/data')
        self.seen = []

    def condition(self, record, written):
        self.seen.append(record)
        return True

    def test_a_session_never_written(self):
        self.assertFalse(self.store.remove_if(SESSION_ID, self.condition))
        self.assertEqual(self.seen, [])

    def test_a_file_beaker_cannot_unpickle(self):
        self.store.merge(SESSION_ID, lambda old: {'a': 1})
        path = self.store._namespace(SESSION_ID).file
        with open(path, 'wb') as f:
            f.write(b'not a pickle')
        self.assertTrue(self.store.remove_if(SESSION_ID, self.condition))
        self.assertEqual(self.seen, [DAMAGED])
        self.assertEqual(repr(self.seen[0]), 'DAMAGED')
        self.assertIsNone(self.store.load(SESSION_ID))

    def test_stores_without_a_record_per_file_or_row(self):
        memory = BeakerStore(clsmap['memory'], {})
        with self.assertRaises(TypeError):
            memory.remove_if(SESSION_ID, self.condition)
