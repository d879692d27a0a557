"""The session object: the transient object API, with a real file store."""
import collections
import os
import shutil
import tempfile
import time
import unittest

from beaker.container import FileNamespaceManager

import transaction
from OFS.Folder import Folder
from persistent.mapping import PersistentMapping
from ZODB import DB
from ZODB.utils import p64

from Products.BeakerSessionDataManager import references
from Products.BeakerSessionDataManager.references import zodb_connection
from Products.BeakerSessionDataManager.session import BeakerSessionData
from Products.BeakerSessionDataManager.session import fingerprint
from Products.BeakerSessionDataManager.store import BeakerStore
from Products.BeakerSessionDataManager.tests.stores import age


SESSION_ID = 'a' * 32


class SessionTestCase(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.store = BeakerStore(
            FileNamespaceManager, {'lock_dir': self.tmp + '/lock'},
            data_dir=self.tmp + '/data', timeout=1200)
        transaction.begin()
        self.addCleanup(transaction.abort)

    def session(self, session_id=SESSION_ID):
        """The session as a new request would load it."""
        now = time.time()
        session = BeakerSessionData(session_id, self.store.load(session_id),
                                    now=now, store=self.store, timeout=1200)
        session._access(now)
        return session

    def stored(self, session_id=SESSION_ID):
        record = self.store.load(session_id)
        return None if record is None else {
            key: value for key, value in record.items()
            if not key.startswith('_')}


class MappingTests(SessionTestCase):
    """Same results as Products.Transience's TransientObject."""

    def test_missing_key(self):
        session = self.session()
        self.assertRaises(KeyError, session.__getitem__, 'missing')
        self.assertIsNone(session.get('missing'))
        self.assertEqual(session.get('missing', 'd'), 'd')
        self.assertEqual(session.has_key('missing'), 0)
        self.assertEqual('missing' in session, False)

    def test_lists(self):
        session = self.session()
        session['a'] = 1
        session.set('b', 2)
        self.assertEqual(sorted(session.keys()), ['a', 'b'])
        self.assertEqual(sorted(session.values()), [1, 2])
        self.assertEqual(sorted(session.items()), [('a', 1), ('b', 2)])
        self.assertIsInstance(session.keys(), list)
        self.assertIsInstance(session.values(), list)
        self.assertIsInstance(session.items(), list)
        self.assertEqual(session.has_key('a'), 1)

    def test_delete_update_clear(self):
        session = self.session()
        session.update({'a': 1, 'b': 2})
        session.delete('a')
        del session['b']
        self.assertEqual(session.keys(), [])
        self.assertRaises(KeyError, session.delete, 'a')
        session.update({'c': 3})
        session.clear()
        self.assertEqual(session.keys(), [])

    def test_guarded_methods_for_restricted_code(self):
        session = self.session()
        session.__guarded_setitem__('x', 1)
        self.assertEqual(session['x'], 1)
        session.__guarded_delitem__('x')
        self.assertNotIn('x', session)

    def test_dict_methods_stock_lacks(self):
        session = self.session()
        self.assertTrue(session)
        self.assertEqual(len(session), 0)
        self.assertEqual(session.setdefault('a', []), [])
        self.assertEqual(session.pop('a'), [])
        self.assertEqual(session.pop('a', 'gone'), 'gone')
        self.assertRaises(KeyError, session.pop, 'a')
        session.update(b=2, c=3)
        self.assertEqual(sorted(session), ['b', 'c'])
        self.assertEqual(len(session), 2)

    def test_timestamps(self):
        session = self.session()
        self.assertIsInstance(session.getCreated(), float)
        self.assertIsInstance(session.getLastAccessed(), float)
        self.assertIsNone(session.getLastModified())
        session['a'] = 1
        self.assertIsInstance(session.getLastModified(), float)
        created = session.getCreated()
        transaction.commit()
        again = self.session()
        self.assertEqual(again.getCreated(), created)
        self.assertIsInstance(again.getLastModified(), float)

    def test_ids(self):
        session = self.session()
        self.assertEqual(session.getContainerKey(), SESSION_ID)
        self.assertNotEqual(session.getId(), SESSION_ID)
        self.assertTrue(session.getId().isdigit())
        transaction.commit()
        self.assertEqual(self.session().getId(), session.getId())

    def test_beaker_keys_are_invisible(self):
        session = self.session()
        session['a'] = 1
        transaction.commit()
        self.assertEqual(self.session().keys(), ['a'])
        self.assertIn('_creation_time', self.store.load(SESSION_ID))

    def test_repr_shows_keys_not_values(self):
        session = self.session()
        session['password'] = 'hunter2'
        self.assertIn('password', repr(session))
        self.assertNotIn('hunter2', repr(session))


class WriteTests(SessionTestCase):
    """Writes follow the transaction and carry only this request's changes."""

    def test_commit_writes(self):
        session = self.session()
        session['a'] = 1
        self.assertIsNone(self.stored())
        transaction.commit()
        self.assertEqual(self.stored(), {'a': 1})

    def test_abort_writes_nothing_and_reverts(self):
        first = self.session()
        first['a'] = 1
        transaction.commit()
        session = self.session()
        session['a'] = 2
        session['b'] = 3
        transaction.abort()
        self.assertEqual(self.stored(), {'a': 1})
        self.assertEqual(session['a'], 1)
        self.assertNotIn('b', session)

    def test_new_empty_session_is_stored(self):
        self.session()
        transaction.commit()
        self.assertEqual(self.stored(), {})

    def test_read_only_request_does_not_write(self):
        session = self.session()
        session['a'] = 1
        transaction.commit()
        before = self.store.load(SESSION_ID)
        self.assertEqual(self.session()['a'], 1)
        transaction.commit()
        self.assertEqual(self.store.load(SESSION_ID), before)

    def test_access_time_refreshed_after_granularity(self):
        self.session()
        transaction.commit()
        age(self.store, SESSION_ID, 60)
        old = self.store.load(SESSION_ID)['_accessed_time']
        reader = self.session()
        # Accessed when handed out, as stock's container records it.
        self.assertGreater(reader.getLastAccessed(), old + 59)
        transaction.commit()
        self.assertEqual(self.store.load(SESSION_ID)['_accessed_time'],
                         reader.getLastAccessed())

    def test_access_time_kept_within_granularity(self):
        self.session()
        transaction.commit()
        age(self.store, SESSION_ID, 10)
        before = self.store.load(SESSION_ID)
        reader = self.session()
        self.assertEqual(reader.getLastAccessed(), before['_accessed_time'])
        transaction.commit()
        self.assertEqual(self.store.load(SESSION_ID), before)

    def test_concurrent_requests_writing_different_keys(self):
        first = self.session()
        transaction.commit()
        one = self.session()
        two = self.session()
        one['x'] = 1
        transaction.commit()
        two['y'] = 2
        transaction.commit()
        self.assertEqual(self.stored(), {'x': 1, 'y': 2})
        self.assertEqual(sorted(two.keys()), ['x', 'y'])
        self.assertIsNotNone(first)

    def test_concurrent_delete_and_set(self):
        self.session().update({'x': 1, 'y': 2})
        transaction.commit()
        one = self.session()
        two = self.session()
        del one['x']
        transaction.commit()
        two['z'] = 3
        transaction.commit()
        self.assertEqual(self.stored(), {'y': 2, 'z': 3})

    def test_same_key_later_commit_wins(self):
        self.session()
        transaction.commit()
        one = self.session()
        two = self.session()
        two['x'] = 'two'
        one['x'] = 'one'
        transaction.commit()
        self.assertEqual(self.stored(), {'x': 'one'})

    def test_in_place_mutation_is_detected(self):
        self.session()['cart'] = ['apple']
        transaction.commit()
        self.session()['cart'].append('pear')
        transaction.commit()
        self.assertEqual(self.stored(), {'cart': ['apple', 'pear']})

    def test_in_place_mutation_of_a_value_marshal_refuses_is_detected(self):
        # An OrderedDict is no builtin dict to marshal: pickled instead.
        self.session()['cart'] = collections.OrderedDict(apple=1)
        transaction.commit()
        self.session()['cart']['pear'] = 2
        transaction.commit()
        self.assertEqual(self.stored(), {'cart': {'apple': 1, 'pear': 2}})

    def test_reading_a_list_joins_the_transaction_only_if_it_changed(self):
        self.session()['cart'] = ['apple']
        transaction.commit()
        session = self.session()
        session['cart']
        # Watched, not joined: a commit without a two-phase commit of ours.
        self.assertEqual(transaction.get()._resources, [])
        written = self.store_writes_during(transaction.commit)
        self.assertEqual(written, 0)
        session = self.session()
        session['cart'].append('pear')
        written = self.store_writes_during(transaction.commit)
        self.assertEqual(written, 1)
        self.assertEqual(self.stored(), {'cart': ['apple', 'pear']})

    def test_a_list_read_before_a_change_of_another_key(self):
        self.session()['cart'] = ['apple']
        transaction.commit()
        session = self.session()
        session['cart'].append('pear')
        session['n'] = 1  # Joins: the hook and the vote both look.
        transaction.commit()
        self.assertEqual(self.stored(), {'cart': ['apple', 'pear'], 'n': 1})

    def test_an_aborted_read_is_not_checked_later(self):
        self.session()['cart'] = ['apple']
        transaction.commit()
        session = self.session()
        session['cart'].append('pear')
        transaction.abort()
        transaction.commit()
        self.assertEqual(self.stored(), {'cart': ['apple']})

    def store_writes_during(self, action):
        merges = []
        merge = self.store.merge

        def counting_merge(*args):
            merges.append(args[0])
            return merge(*args)

        self.store.merge = counting_merge
        try:
            action()
        finally:
            del self.store.merge
        return len(merges)

    def test_fingerprints(self):
        self.assertEqual(fingerprint(['a', 1]), fingerprint(['a', 1]))
        self.assertNotEqual(fingerprint(['a', 1]), fingerprint(['a', 2]))
        self.assertNotEqual(fingerprint({'a': 1}),
                            fingerprint(collections.OrderedDict(a=1)))
        self.assertIsNone(fingerprint(lambda: None))  # Neither takes it.

    def test_p_changed_marks_values_read(self):
        self.session()['cart'] = {'n': 1}
        transaction.commit()
        session = self.session()
        cart = session.get('cart')
        cart['n'] = 2
        session._p_changed = 1
        self.assertTrue(session._p_changed)
        transaction.commit()
        self.assertEqual(self.stored(), {'cart': {'n': 2}})

    def test_clear_then_set(self):
        self.session().update({'x': 1, 'y': 2})
        transaction.commit()
        session = self.session()
        session.clear()
        session['z'] = 3
        transaction.commit()
        self.assertEqual(self.stored(), {'z': 3})

    def test_invalidate_deletes_the_record(self):
        self.session()['x'] = 1
        transaction.commit()
        session = self.session()
        session.invalidate()
        self.assertFalse(session.isValid())
        transaction.commit()
        self.assertIsNone(self.store.load(SESSION_ID))

    def test_savepoint_rollback(self):
        session = self.session()
        session['a'] = 1
        savepoint = transaction.savepoint()
        session['b'] = 2
        del session['a']
        savepoint.rollback()
        self.assertEqual(session.keys(), ['a'])
        transaction.commit()
        self.assertEqual(self.stored(), {'a': 1})

    def test_savepoint_then_commit_keeps_later_changes(self):
        session = self.session()
        session['a'] = 1
        transaction.savepoint()
        session['b'] = 2
        transaction.commit()
        self.assertEqual(self.stored(), {'a': 1, 'b': 2})

    def test_second_transaction_in_one_request(self):
        session = self.session()
        session['a'] = 1
        transaction.commit()
        session['b'] = 2
        transaction.commit()
        self.assertEqual(self.stored(), {'a': 1, 'b': 2})

    def test_failed_store_write_fails_the_transaction(self):
        from Products.BeakerSessionDataManager.interfaces import \
            SessionStoreError
        session = self.session()
        session['a'] = 1
        # A directory where the session file should be: writing fails.
        os.makedirs(self.store._namespace(SESSION_ID).file)
        with self.assertRaises(SessionStoreError) as caught:
            transaction.commit()
        self.assertIn('could not be saved', str(caught.exception))
        transaction.abort()
        self.assertNotIn('a', session)


class ZODBObjectTests(SessionTestCase):
    """Objects of a ZODB are kept as references (see references.py)."""

    def setUp(self):
        super().setUp()
        self.db = DB(None)
        self.addCleanup(self.db.close)
        self.connection = self.db.open()
        self.addCleanup(self.connection.close)
        self.shelf = Folder('shelf')
        self.shelf.contents = 'x' * 100000
        self.connection.root()['shelf'] = self.shelf
        transaction.commit()

    def session(self, session_id=SESSION_ID):
        with zodb_connection(self.connection):
            session = super().session(session_id)
        session._zodb_connection = self.connection
        return session

    def test_a_savepoint_rollback_keeps_the_object(self):
        session = self.session()
        session['shelf'] = self.shelf
        savepoint = transaction.savepoint()
        session['shelf'] = 'replaced'
        savepoint.rollback()
        self.assertIs(session['shelf'], self.shelf)

    def test_the_object_is_not_pickled_with_its_contents(self):
        session = self.session()
        session['things'] = [self.shelf]
        self.assertLess(len(fingerprint(session['things'])), 100)
        transaction.commit()
        self.assertLess(
            os.path.getsize(self.store._namespace(SESSION_ID).file), 1000)
        self.assertIs(self.session()['things'][0], self.shelf)

    def test_read_without_a_connection(self):
        session = self.session()
        session['shelf'] = self.shelf
        transaction.commit()
        reference = self.store.load(SESSION_ID)['shelf']
        self.assertEqual(repr(reference), '<ZODBReference unnamed:0x1>')
        self.assertEqual(references.loads(references.dumps(reference)),
                         reference)

    def test_another_object_under_the_oid_is_not_handed_out(self):
        # Instances with ZODBs of their own share the store: the oid of
        # the shelf is another object (of another class) in the other's.
        session = self.session()
        session['shelf'] = self.shelf
        transaction.commit()
        other_db = DB(None)
        self.addCleanup(other_db.close)
        other = other_db.open()
        self.addCleanup(other.close)
        other.root()['not the shelf'] = PersistentMapping()
        transaction.commit()
        self.assertEqual(other.root()['not the shelf']._p_oid,
                         self.shelf._p_oid)
        self.connection = other
        found = self.session()['shelf']
        self.assertEqual(repr(found), '<ZODBReference unnamed:0x1>')

    def test_an_object_that_cannot_be_found(self):
        session = self.session()
        gone = references.ZODBReference(('unnamed', p64(999)))
        elsewhere = references.ZODBReference(('no such database', p64(1)))
        session.update({'gone': gone, 'elsewhere': elsewhere, 'a': 1})
        transaction.commit()
        self.assertEqual(self.session().items(),
                         [('gone', gone), ('elsewhere', elsewhere), ('a', 1)])
