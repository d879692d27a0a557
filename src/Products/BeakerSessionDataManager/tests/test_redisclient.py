"""The Redis store's client cache stays coherent with Redis.

Every test writes behind the back of the store under test (redis-py,
Beaker's own session, a second store with a client of its own) and checks
that the store's next read sees the write, on a real redis-server.
"""
import pickle
import secrets
import socket
import time
import unittest

from beaker.session import Session

from Products.BeakerSessionDataManager import redisclient
from Products.BeakerSessionDataManager import redisstore
from Products.BeakerSessionDataManager.config import SessionConfiguration
from Products.BeakerSessionDataManager.interfaces import ConfigurationError
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests.instance import new_secret


def record(**data):
    now = time.time()
    return dict(data, _creation_time=now, _accessed_time=now)


class RedisFixture:

    server_args = ()

    @classmethod
    def setUpClass(cls):
        cls.server = servers.RedisServer(None, *cls.server_args).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()

    def setUp(self):
        self.redis = self.server.client()
        self.addCleanup(self.redis.close)
        self.redis.flushdb()
        self.addCleanup(self.forget_clients)

    def forget_clients(self):
        with redisstore._clients_lock:
            for client in redisstore._clients.values():
                for slot in client.slots:
                    slot._drop()
            redisstore._clients.clear()

    def make_store(self, cache_size=redisstore.DEFAULT_CACHE_SIZE,
                   url=None):
        settings = {'session.type': 'ext:redis',
                    'session.url': url or self.server.url,
                    'session.secret': new_secret(),
                    'session.client_cache_size': str(cache_size)}
        return SessionConfiguration(settings).store

    def round_trips(self, call, *args):
        """What ``call(*args)`` answered, and the round trips it made."""
        before = self.redis.info('stats')['total_reads_processed']
        result = call(*args)
        after = self.redis.info('stats')['total_reads_processed']
        return result, after - before - 1  # Less our own INFO.


class ClientCacheTests(RedisFixture, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.store = self.make_store()
        self.session_id = secrets.token_hex(16)
        self.key = redisstore.KEY % self.session_id
        self.store.merge(self.session_id, lambda old: record(n=1))

    def test_own_writes_are_read_from_the_cache(self):
        loaded, trips = self.round_trips(self.store.load, self.session_id)
        self.assertEqual((loaded['n'], trips), (1, 0))
        self.store.merge(self.session_id, lambda old: dict(old or {}, n=2))
        loaded, trips = self.round_trips(self.store.load, self.session_id)
        self.assertEqual((loaded['n'], trips), (2, 0))

    def test_a_write_by_another_client_is_read_next(self):
        other = self.make_store(cache_size=0)
        for n in range(2, 200):
            self.store.load(self.session_id)  # cached
            other.merge(self.session_id, lambda old: dict(old or {}, n=n))
            self.settled()
            self.assertEqual(self.store.load(self.session_id)['n'], n)

    def settled(self):
        """Let Redis finish the pass of its event loop that answered the
        last writer: it sends the notices of a write in the same pass,
        microseconds after or before the writer's answer.  A browser's
        next request cannot come sooner: it waits for the response."""
        self.redis.ping()

    def test_another_clients_write_after_our_own_write_is_seen(self):
        # Our write ends Redis's tracking of the key; the write script
        # reads it again so that the next foreign write is announced.
        other = self.make_store(cache_size=0)
        self.store.merge(self.session_id, lambda old: dict(old or {}, n=2))
        other.merge(self.session_id, lambda old: dict(old or {}, n=3))
        self.settled()
        self.assertEqual(self.store.load(self.session_id)['n'], 3)

    def test_beakers_own_session_writes_are_seen(self):
        self.store.load(self.session_id)
        session = Session({}, id=self.session_id, use_cookies=False,
                          type='ext:redis', url=self.server.url,
                          timeout=self.store.timeout)
        session['from_beaker'] = 1
        session.save()
        self.settled()
        self.assertEqual(self.store.load(self.session_id)['from_beaker'], 1)

    def test_a_deleted_record_reads_as_none(self):
        self.store.load(self.session_id)
        self.redis.delete(self.key)
        self.settled()
        self.assertIsNone(self.store.load(self.session_id))
        # And our own delete, then another client's new record.
        self.store.delete(self.session_id)
        self.redis.set(self.key, self.redis_value(n=5))
        self.settled()
        self.assertEqual(self.store.load(self.session_id)['n'], 5)

    def test_a_record_that_was_missing_is_read_when_it_appears(self):
        missing = secrets.token_hex(16)
        self.assertIsNone(self.store.load(missing))
        self.redis.set(redisstore.KEY % missing, self.redis_value(n=7))
        self.settled()
        self.assertEqual(self.store.load(missing)['n'], 7)

    def test_flushing_the_database_empties_the_cache(self):
        self.store.load(self.session_id)
        self.redis.flushdb()
        self.settled()
        self.assertIsNone(self.store.load(self.session_id))

    def test_an_expired_key_is_gone(self):
        self.store.load(self.session_id)
        self.redis.pexpire(self.key, 1)
        time.sleep(0.05)
        self.assertIsNone(self.redis.get(self.key))  # Redis expires it.
        self.settled()
        self.assertIsNone(self.store.load(self.session_id))

    def test_a_killed_connection_drops_the_cache(self):
        # The notices of a lost connection are lost: whatever was written
        # meanwhile is read from Redis.
        self.store.load(self.session_id)
        self.redis.client_kill_filter(_type='normal', skipme=True)
        self.redis.set(self.key, self.redis_value(n=9))
        self.assertEqual(self.store.load(self.session_id)['n'], 9)
        loaded, trips = self.round_trips(self.store.load, self.session_id)
        self.assertEqual((loaded['n'], trips), (9, 0))

    def test_a_restarted_server_is_read_afresh(self):
        self.store.load(self.session_id)
        self.server.stop()
        self.server.start()
        self.redis = self.server.client()
        self.redis.set(self.key, self.redis_value(n=11))
        self.assertEqual(self.store.load(self.session_id)['n'], 11)

    def test_a_small_cache_stays_correct(self):
        store = self.make_store(cache_size=2)
        other = self.make_store(cache_size=0)
        ids = [secrets.token_hex(16) for _ in range(30)]
        for n, session_id in enumerate(ids):
            store.merge(session_id, lambda old: record(n=n))
        for n, session_id in enumerate(ids):
            other.merge(session_id, lambda old: dict(old or {}, n=n + 100))
        self.settled()
        self.assertEqual([store.load(session_id)['n'] for session_id in ids],
                         list(range(100, 130)))

    def test_without_cache_every_read_is_a_get(self):
        store = self.make_store(cache_size=0)
        store.load(self.session_id)
        loaded, trips = self.round_trips(store.load, self.session_id)
        self.assertEqual((loaded['n'], trips), (1, 1))

    def redis_value(self, **data):
        # A record as Beaker writes it: the pickled encoded string.
        return pickle.dumps(self.store.encode(record(**data)))


class NoTrackingTests(RedisFixture, unittest.TestCase):
    """A server that cannot track keys (CLIENT renamed away, as some
    managed services and proxies have it): no cache, same answers."""

    server_args = ('--rename-command', 'CLIENT', '')

    def test_reads_go_to_redis_and_see_every_write(self):
        store = self.make_store()
        session_id = secrets.token_hex(16)
        store.merge(session_id, lambda old: record(n=1))
        loaded, trips = self.round_trips(store.load, session_id)
        self.assertEqual((loaded['n'], trips), (1, 1))
        self.redis.set(redisstore.KEY % session_id,
                       pickle.dumps(store.encode(record(n=2))))
        self.assertEqual(store.load(session_id)['n'], 2)


class PasswordTests(RedisFixture, unittest.TestCase):

    server_args = ('--requirepass', 'sesame-sesame')

    def setUp(self):
        import redis
        self.redis = redis.Redis(port=self.server.port,
                                 password='sesame-sesame', db=2)
        self.addCleanup(self.redis.close)
        self.addCleanup(self.forget_clients)

    def test_the_password_of_the_url_is_sent(self):
        url = 'redis://:sesame-sesame@127.0.0.1:%d/2' % self.server.port
        store = self.make_store(url=url)
        session_id = secrets.token_hex(16)
        store.merge(session_id, lambda old: record(n=1))
        self.assertTrue(self.redis.exists(redisstore.KEY % session_id))
        self.assertEqual(store.load(session_id)['n'], 1)

    def test_a_wrong_password_is_a_clear_error(self):
        url = 'redis://:wrong@127.0.0.1:%d/0' % self.server.port
        store = self.make_store(url=url)
        with self.assertRaisesRegex(ConnectionError, 'refused'):
            store.load(secrets.token_hex(16))


class SilentServerTests(RedisFixture, unittest.TestCase):
    """A server that accepts connections and never answers."""

    def test_the_socket_timeout_of_the_url_ends_the_wait(self):
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(('127.0.0.1', 0))
        listener.listen()
        url = 'redis://127.0.0.1:%d/0?socket_timeout=0.3' % (
            listener.getsockname()[1])
        store = self.make_store(url=url)
        started = time.monotonic()
        with self.assertRaises(TimeoutError):
            store.load(secrets.token_hex(16))
        # Not retried: one timeout, not the default 10 seconds, nor two.
        self.assertLess(time.monotonic() - started, 3)


class URLTests(unittest.TestCase):

    def test_forms(self):
        parse = redisclient.parse_url
        self.assertEqual(
            {key: value for key, value in parse(
                'redis://user:p%40ss@example.org:6380/3').items()
             if key in ('host', 'port', 'db', 'username', 'password')},
            {'host': 'example.org', 'port': 6380, 'db': 3,
             'username': 'user', 'password': 'p@ss'})
        self.assertEqual(parse('unix:///run/redis.sock?db=2')['path'],
                         '/run/redis.sock')
        self.assertTrue(parse('rediss://example.org')['ssl'])
        self.assertEqual(
            parse('redis://h?socket_timeout=2.5')['socket_timeout'], 2.5)

    def test_unknown_parameters_name_the_option(self):
        settings = {'session.type': 'ext:redis',
                    'session.url': 'redis://127.0.0.1/0?retry=3',
                    'session.secret': new_secret()}
        with self.assertRaisesRegex(ConfigurationError,
                                    'session.url: unknown URL parameter '
                                    'retry'):
            SessionConfiguration(settings)

    def test_cache_size_is_for_redis_only(self):
        settings = {'session.type': 'memory', 'session.secret': new_secret(),
                    'session.client_cache_size': '10'}
        with self.assertRaisesRegex(ConfigurationError,
                                    'session.client_cache_size'):
            SessionConfiguration(settings)
        settings['session.client_cache_size'] = '-1'
        with self.assertRaisesRegex(ConfigurationError,
                                    'session.client_cache_size'):
            SessionConfiguration(settings)
