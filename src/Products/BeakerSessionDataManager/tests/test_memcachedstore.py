"""The memcached store: Beaker's records, written with ``gets``/``cas``.

On a real memcached: Beaker's keys, sharing records with Beaker's own
sessions, interleaved writers that never lose each other's changes, and a
session too large for memcached refused with a clear error.
"""
import secrets
import time
import unittest

from beaker.ext.memcached import MemcachedNamespaceManager
from beaker.session import Session

import transaction
from ZODB.POSException import ConflictError

from Products.BeakerSessionDataManager.config import SessionConfiguration
from Products.BeakerSessionDataManager.interfaces import SessionTooLargeError
from Products.BeakerSessionDataManager.memcachedstore import MemcachedStore
from Products.BeakerSessionDataManager.session import BeakerSessionData
from Products.BeakerSessionDataManager.store import RECORD_KEY
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests.instance import new_secret
from Products.BeakerSessionDataManager.tests.test_stores import \
    FailsAfterTheSession


def record(**data):
    now = time.time()
    return dict(data, _creation_time=now, _accessed_time=now)


class MemcachedStoreTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = servers.MemcachedServer().start()

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()

    def make_store(self):
        return SessionConfiguration({
            'session.type': 'ext:memcached',
            'session.url': self.server.address,
            'session.secret': new_secret()}).store

    def test_keys_are_beakers(self):
        for session_id in (secrets.token_hex(16), 'with space', 'x' * 300):
            namespace = MemcachedNamespaceManager(
                session_id, url=self.server.address)
            self.assertEqual(MemcachedStore.key(session_id),
                             namespace._format_key(RECORD_KEY))

    def test_beaker_reads_our_records_and_we_read_beakers(self):
        store = self.make_store()
        session_id = secrets.token_hex(16)
        store.merge(session_id, lambda old: record(ours=1))
        session = Session({}, id=session_id, use_cookies=False,
                          type='ext:memcached', url=self.server.address,
                          timeout=store.timeout)
        self.assertEqual(session['ours'], 1)
        session['theirs'] = 2
        session.save()
        self.assertEqual(store.load(session_id)['theirs'], 2)

    def test_interleaved_writers_keep_each_others_changes(self):
        # Two stores, as two Zope instances: each reads, then the other
        # writes before it does.
        first, second = self.make_store(), self.make_store()
        session_id = secrets.token_hex(16)
        first.merge(session_id, lambda old: record())
        for n in range(20):
            first.load(session_id)
            second.load(session_id)
            second.merge(session_id,
                         lambda old: dict(old or {}, **{'b%d' % n: n}))
            first.merge(session_id,
                        lambda old: dict(old or {}, **{'a%d' % n: n}))
        stored = first.load(session_id)
        for n in range(20):
            self.assertEqual((stored['a%d' % n], stored['b%d' % n]), (n, n))

    def test_a_session_too_large_for_memcached_is_refused(self):
        # A bug to fix (500, naming the largest values), not an outage.
        store = self.make_store()
        session_id = secrets.token_hex(16)
        store.merge(session_id, lambda old: record(small=1))
        store.load(session_id)
        with self.assertRaisesRegex(
                SessionTooLargeError,
                r"does not fit in memcached: \d+ bytes, items hold at most "
                r"1048576 .*the largest values: 'big', 'small'"):
            store.merge(session_id,
                        lambda old: dict(old or {}, big='x' * 2 ** 21))
        self.assertEqual(store.load(session_id)['small'], 1)
        with self.assertRaisesRegex(SessionTooLargeError, 'memcached'):
            store.merge(secrets.token_hex(16),
                        lambda old: record(big='x' * 2 ** 21))
        # Larger than memcached's own limit only (its -I counts the key and
        # the item's header too): memcached refuses it, which
        # python-memcached reports as it reports a server down.
        limit = store.client.server_max_value_length
        with self.assertRaisesRegex(ConnectionError,
                                    'larger than the item size limit'):
            store.merge(session_id, lambda old: dict(
                old or {}, big='x' * (limit * 3 // 4 - 150)))
        self.assertEqual(store.load(session_id)['small'], 1)

    def test_versions_dropped_by_another_load_are_read_again(self):
        # python-memcached forgets every version it holds past a limit
        # (here: at once); a write must then read the version again, not
        # store without comparing.
        store = self.make_store()
        session_id = secrets.token_hex(16)
        store.merge(session_id, lambda old: record(n=1))
        store.load(session_id)
        store.client.reset_cas()
        other = self.make_store()
        other.load(session_id)
        other.merge(session_id, lambda old: dict(old, other=1))
        store.merge(session_id, lambda old: dict(old or {}, n=2))
        self.assertEqual(
            {key: value for key, value in store.load(session_id).items()
             if not key.startswith('_')}, {'n': 2, 'other': 1})

    def test_many_versions_are_forgotten(self):
        # As if this thread had read 2000 other items.
        store = self.make_store()
        store.client.cas_ids.update(
            {('item-%d' % n).encode(): n for n in range(2000)})
        store.load(secrets.token_hex(16))
        self.assertLessEqual(len(store.client.cas_ids), 1)

    def test_deleting(self):
        store = self.make_store()
        session_id = secrets.token_hex(16)
        store.merge(session_id, lambda old: record(n=1))
        store.load(session_id)
        store.merge(session_id, lambda old: None)
        self.assertIsNone(store.load(session_id))
        store.merge(session_id, lambda old: record(n=2))
        store.delete(session_id)
        self.assertIsNone(store.load(session_id))


class RestartTests(unittest.TestCase):
    """A memcached restarted at once closes the connection a thread keeps:
    python-memcached marks the server dead for 30 seconds at the thread's
    next command unless the store tries again on a new connection."""

    def setUp(self):
        self.server = servers.MemcachedServer().start()
        self.addCleanup(self.server.cleanup)
        self.store = SessionConfiguration({
            'session.type': 'ext:memcached',
            'session.url': self.server.address,
            'session.secret': new_secret()}).store

    def restart(self):
        self.server.kill()
        self.server.start()

    def test_a_restarted_server_is_used_at_once(self):
        store = self.store
        session_id = secrets.token_hex(16)
        store.merge(session_id, lambda old: record(n=1))
        self.restart()
        # Read first: the restarted server has forgotten the session.
        self.assertIsNone(store.load(session_id))
        store.merge(session_id, lambda old: record(n=2))
        self.assertEqual(store.load(session_id)['n'], 2)
        # Written first (a new session: add).
        self.restart()
        other = secrets.token_hex(16)
        store.merge(other, lambda old: record(n=3))
        self.assertEqual(store.load(other)['n'], 3)
        # Deleted first.
        self.restart()
        store.delete(other)
        self.assertIsNone(store.load(other))

    def test_taking_back_a_write_the_server_refuses_is_logged(self):
        # A data manager voting after the session fails the commit, and the
        # server is gone by then: the abort goes on, and the log says so.
        session_id = secrets.token_hex(16)
        self.store.merge(session_id, lambda old: record(n=1))
        session = BeakerSessionData(session_id, self.store.load(session_id),
                                    store=self.store)
        session['n'] = 2
        transaction.get().join(FailsAfterTheSession(self.server.kill))
        with self.assertLogs('Products.BeakerSessionDataManager',
                             'ERROR') as logged:
            with self.assertRaises(ConflictError):
                transaction.commit()
        transaction.abort()
        self.assertIn('session %s... keeps the changes of a transaction '
                      'that failed after they were written' % session_id[:8],
                      '\n'.join(logged.output))
        self.server.start()

    def test_a_server_that_stays_down_still_fails(self):
        session_id = secrets.token_hex(16)
        self.store.merge(session_id, lambda old: record(n=1))
        self.server.kill()
        with self.assertRaises(ConnectionError):
            self.store.load(session_id)

    def test_a_delete_that_reaches_no_server_fails(self):
        # python-memcached answers it as it answers a missing item: an
        # invalidated session (a logout) would silently stay.
        session_id = secrets.token_hex(16)
        self.store.merge(session_id, lambda old: record(n=1))
        self.store.load(session_id)
        self.server.kill()
        with self.assertRaises(ConnectionError):
            self.store.merge(session_id, lambda old: None)
        with self.assertRaises(ConnectionError):
            self.store.delete(session_id)


class PoolWithADeadServerTests(unittest.TestCase):
    """python-memcached sends the key of a dead server to others of the
    pool, drawn ten times: a key can draw the dead one every time."""

    def setUp(self):
        self.pool = [servers.MemcachedServer().start() for _ in range(2)]
        for server in self.pool:
            self.addCleanup(server.cleanup)
        self.store = SessionConfiguration({
            'session.type': 'ext:memcached',
            'session.url': servers.memcached_url(self.pool),
            'session.secret': new_secret()}).store

    def unlucky_session_id(self, dead):
        """A session id whose ten draws all give the server ``dead``."""
        from memcache import serverHashFunction
        client = self.store.client
        while True:
            session_id = secrets.token_hex(16)
            serverhash = serverHashFunction(
                client._encode_key(self.store.key(session_id)))
            for number in range(client._SERVER_RETRIES):
                server = client.buckets[serverhash % len(client.buckets)]
                if server is not client.servers[dead]:
                    break
                serverhash = serverHashFunction(
                    (str(serverhash) + str(number)).encode('ascii'))
            else:
                return session_id

    def test_a_key_that_finds_no_live_server_is_a_missing_session(self):
        session_id = self.unlucky_session_id(dead=0)
        self.pool[0].kill()
        self.assertIsNone(self.store.load(session_id))
        # Other sessions go on.
        other = secrets.token_hex(16)
        self.store.merge(other, lambda old: record(n=1))
        self.assertEqual(self.store.load(other)['n'], 1)

    def test_with_every_server_dead_a_read_fails(self):
        session_id = self.unlucky_session_id(dead=0)
        for server in self.pool:
            server.kill()
        with self.assertRaises(ConnectionError):
            self.store.load(session_id)
