"""The Redis store's client cache stays coherent with Redis.

Every test writes behind the back of the store under test (redis-py,
Beaker's own session, a second store with a client of its own) and checks
that the store's next read sees the write, on a real redis-server.
"""
import datetime
import ipaddress
import json
import os
import pickle
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
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
    # redis-py's, for the test's own client.
    client_options = {}

    @classmethod
    def setUpClass(cls):
        cls.server = servers.RedisServer(None, *cls.server_args).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()

    def setUp(self):
        self.redis = self.client()
        self.addCleanup(self.redis.close)
        self.redis.flushdb()
        self.addCleanup(self.forget_clients)

    def client(self):
        import redis
        return redis.Redis(port=self.server.port, **self.client_options)

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

    def stored_session(self, url=None,
                       cache_size=redisstore.DEFAULT_CACHE_SIZE):
        """A store on ``url`` and the id of a session it has written."""
        store = self.make_store(cache_size, url)
        session_id = secrets.token_hex(16)
        store.merge(session_id, lambda old: record(n=1))
        return store, session_id

    def pings(self, call, *args):
        """The PINGs that ``call(*args)`` sent."""
        self.redis.config_resetstat()
        call(*args)
        return self.redis.info('commandstats').get(
            'cmdstat_ping', {}).get('calls', 0)

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
            self.assertEqual(self.store.load(self.session_id)['n'], n)

    def settled(self):
        """Wait, as this product's writers do (``Slot.sync``), until Redis
        has sent out the notices of a write by redis-py or Beaker."""
        self.redis.ping()

    def test_another_clients_write_after_our_own_write_is_seen(self):
        # Our write ends Redis's tracking of the key; the write script
        # reads it again so that the next foreign write is announced.
        other = self.make_store(cache_size=0)
        self.store.merge(self.session_id, lambda old: dict(old or {}, n=2))
        other.merge(self.session_id, lambda old: dict(old or {}, n=3))
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

    def test_after_a_flush_the_cache_enters_the_registry_again(self):
        # FLUSHDB empties the registry of caches too: writers elsewhere
        # would no longer wait for this cache's notices.  It enters itself
        # again before it keeps anything.
        channel = self.store.client.channel.encode()
        self.assertIn(channel, self.redis.smembers(redisclient.CACHES_KEY))
        self.store.load(self.session_id)
        self.redis.flushdb()
        self.settled()
        self.assertIsNone(self.store.load(self.session_id))
        self.assertIn(channel, self.redis.smembers(redisclient.CACHES_KEY))
        self.store.merge(self.session_id, lambda old: record(n=3))
        loaded, trips = self.round_trips(self.store.load, self.session_id)
        self.assertEqual((loaded['n'], trips), (3, 0))

    def test_a_cache_entering_the_registry_costs_the_others_a_check(self):
        # Told that the registry changed, a connection checks that its own
        # cache is still there (one SISMEMBER), and keeps what it has.
        self.store.load(self.session_id)
        # Another cache, as another Zope instance has.
        other = self.make_store(cache_size=16)
        other.load(self.session_id)  # It enters the registry.
        self.settled()
        for expected_trips in (1, 0):
            loaded, trips = self.round_trips(self.store.load, self.session_id)
            self.assertEqual((loaded['n'], trips), (1, expected_trips))

    def test_a_deleted_registry_is_entered_again(self):
        # An administrator who deletes every beaker_cache:* key to end all
        # sessions (or an eviction) deletes the registry: writers would no
        # longer wait for this cache's notices.
        channel = self.store.client.channel.encode()
        others = [secrets.token_hex(16) for _ in range(20)]
        for session_id in others:
            self.store.merge(session_id, lambda old: record(n=1))
        self.redis.delete(redisclient.CACHES_KEY)
        self.settled()
        # The first read checks, enters the cache again, and reads afresh.
        loaded, trips = self.round_trips(self.store.load, self.session_id)
        self.assertEqual((loaded['n'], trips), (1, 3))
        self.assertIn(channel, self.redis.smembers(redisclient.CACHES_KEY))
        # Every slot starts afresh: a GET for each session, and where a
        # slot is read first, its check.
        checked = {self.store.client.slot(self.key)}
        expected = []
        for session_id in others:
            slot = self.store.client.slot(redisstore.KEY % session_id)
            expected.append(1 if slot in checked else 2)
            checked.add(slot)
        self.assertEqual([self.round_trips(self.store.load, session_id)[1]
                          for session_id in others], expected)
        # Writers wait for this cache again.
        writer = self.make_store(cache_size=0)
        self.assertEqual(self.pings(writer.merge, self.session_id,
                                    lambda old: dict(old or {}, n=2)), 1)
        self.assertEqual(self.store.load(self.session_id)['n'], 2)

    def test_a_deleted_registry_is_seen_after_a_write_dropped_a_channel(self):
        # Dropping a cache gone is a write of the connection's own, after
        # which Redis tells it nothing more of the registry (a script's
        # reads of keys it does not declare are not tracked): the script
        # says it dropped one, and the connection checks at its next read.
        # A cache of its own, whose first write drops the channel, and no
        # other cache, at whose channel the write would stop looking.
        self.forget_clients()
        self.redis.delete(redisclient.CACHES_KEY)
        gone = b'beaker_cache:client_cache:gone.1'
        self.redis.sadd(redisclient.CACHES_KEY, gone)
        store, session_id = self.stored_session(cache_size=32)
        self.assertNotIn(gone, self.redis.smembers(redisclient.CACHES_KEY))
        self.redis.delete(redisclient.CACHES_KEY)
        self.settled()
        loaded, trips = self.round_trips(store.load, session_id)
        self.assertEqual((loaded['n'], trips), (1, 3))
        self.assertIn(store.client.channel.encode(),
                      self.redis.smembers(redisclient.CACHES_KEY))

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
        self.redis = self.client()
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
        self.assertEqual([store.load(session_id)['n'] for session_id in ids],
                         list(range(100, 130)))

    def test_a_large_session_arrives_in_pieces(self):
        big = 'x' * 300000
        self.store.merge(self.session_id, lambda old: dict(old, big=big))
        other = self.make_store(cache_size=0)
        self.assertEqual(other.load(self.session_id)['big'], big)

    def test_a_session_larger_than_the_socket_buffer_is_sent_whole(self):
        # Sent without waiting as far as the socket's buffer takes it, the
        # rest waiting as Python's sendall does.
        sent = []
        c_send = redisclient._c_send
        self.addCleanup(setattr, redisclient, '_c_send', c_send)
        redisclient._c_send = lambda *args: sent.append(c_send(*args)) or \
            sent[-1]
        big = 'x' * (16 << 20)
        self.store.merge(self.session_id, lambda old: dict(old, big=big))
        self.assertLess(max(sent), 16 << 20)
        other = self.make_store(cache_size=0)
        self.assertEqual(other.load(self.session_id)['big'], big)

    def test_a_value_that_is_no_pickle_reads_as_no_session(self):
        self.redis.set(self.key, b'not a pickle')
        self.settled()
        self.assertIsNone(self.store.load(self.session_id))

    def test_without_cache_a_restart_is_found_out_and_retried(self):
        store = self.make_store(cache_size=0)
        store.load(self.session_id)
        self.server.stop()
        self.server.start()
        self.redis = self.client()
        # The connection the store had is dead; the command is sent again.
        self.assertIsNone(store.load(self.session_id))

    def test_without_cache_every_read_is_a_get(self):
        store = self.make_store(cache_size=0)
        store.load(self.session_id)
        loaded, trips = self.round_trips(store.load, self.session_id)
        self.assertEqual((loaded['n'], trips), (1, 1))

    @unittest.skipUnless(hasattr(os, 'fork'), 'needs os.fork')
    def test_a_forked_child_has_connections_and_a_cache_of_its_own(self):
        # The child must not read the replies meant for its parent, nor
        # trust the parent's cache: nobody tells it about later writes.
        self.store.load(self.session_id)
        pid = os.fork()
        if pid == 0:  # The child.
            code = 1
            try:
                slot = self.store.client.slot(self.key)
                if slot.connection is None and not slot.cache:
                    self.store.merge(self.session_id,
                                     lambda old: dict(old, n=old['n'] + 1))
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        # The parent's connection and cache still work, and learnt of the
        # child's write.
        self.assertEqual(self.store.load(self.session_id)['n'], 2)

    def test_after_a_fork_every_slot_starts_afresh(self):
        # What the forked child runs, here in the test's own process.
        self.store.load(self.session_id)
        slot = self.store.client.slot(self.key)
        lock = slot.lock
        channel = self.store.client.channel
        redisclient._forget_connections_in_child()
        self.assertIsNone(slot.connection)
        self.assertEqual(slot.cache, {})
        self.assertIsNot(slot.lock, lock)
        # The child's cache is not the parent's: a channel of its own.
        self.assertNotEqual(self.store.client.channel, channel)
        # A new connection (HELLO; SUBSCRIBE and SADD, which enter the
        # cache in the registry; CLIENT TRACKING), then the GET.
        loaded, trips = self.round_trips(self.store.load, self.session_id)
        self.assertEqual((loaded['n'], trips), (1, 5))
        self.assertIn(self.store.client.channel.encode(),
                      self.redis.smembers(redisclient.CACHES_KEY))

    def redis_value(self, **data):
        # A record as Beaker writes it: the pickled encoded string.
        return pickle.dumps(self.store.encode(record(**data)))


# Another Zope instance: answers each line on stdin with the session's
# count as its store loads it, cached after the first time.
READER = """\
import json, sys
from Products.BeakerSessionDataManager.config import SessionConfiguration
store = SessionConfiguration(json.loads(sys.argv[1])).store
for session_id in sys.stdin:
    print(store.load(session_id.strip())['n'], flush=True)
"""


@unittest.skipUnless(hasattr(os, 'sched_setaffinity'),
                     'needs os.sched_setaffinity')
class OneCPUTests(RedisFixture, unittest.TestCase):
    """Redis, the writer and the reader on one CPU: woken by the answer to
    its write, the writer runs before Redis has told the reader."""

    def setUp(self):
        super().setUp()
        affinity = os.sched_getaffinity(0)
        self.addCleanup(os.sched_setaffinity, 0, affinity)
        self.addCleanup(os.sched_setaffinity, self.server.process.pid,
                        affinity)
        cpu = {min(affinity)}
        os.sched_setaffinity(self.server.process.pid, cpu)
        os.sched_setaffinity(0, cpu)  # The reader inherits it.
        settings = {'session.type': 'ext:redis',
                    'session.url': self.server.url,
                    'session.secret': new_secret()}
        self.reader = subprocess.Popen(
            [sys.executable, '-c', READER, json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(self.reader.wait)
        self.addCleanup(self.reader.stdin.close)

    def read(self, session_id):
        self.reader.stdin.write(session_id + '\n')
        self.reader.stdin.flush()
        return int(self.reader.stdout.readline())

    def test_the_next_request_after_a_write_sees_it(self):
        store, session_id = self.stored_session()
        for n in range(2, 300):
            self.assertEqual(self.read(session_id), n - 1)  # Now cached.
            store.merge(session_id, lambda old: dict(old, n=n))
            self.assertEqual(self.read(session_id), n)


class NoTrackingTests(RedisFixture, unittest.TestCase):
    """A server that cannot track keys (CLIENT renamed away, as some
    managed services and proxies have it): no cache, same answers."""

    server_args = ('--rename-command', 'CLIENT', '')

    def test_reads_go_to_redis_and_see_every_write(self):
        store, session_id = self.stored_session()
        loaded, trips = self.round_trips(store.load, session_id)
        self.assertEqual((loaded['n'], trips), (1, 1))
        self.redis.set(redisstore.KEY % session_id,
                       pickle.dumps(store.encode(record(n=2))))
        self.assertEqual(store.load(session_id)['n'], 2)

    def test_writers_do_not_wait_for_caches(self):
        # Nobody can cache: no cache enters the registry, and a write is
        # the compare-and-set alone.
        store, session_id = self.stored_session()
        self.assertEqual(self.redis.smembers(redisclient.CACHES_KEY), set())
        self.assertEqual(self.pings(store.merge, session_id,
                                    lambda old: dict(old, n=2)), 0)


class RESP2Tests(RedisFixture, unittest.TestCase):
    """A server without HELLO, as Redis before 6: RESP2, no cache."""

    server_args = ('--rename-command', 'HELLO', '', '--requirepass',
                   'sesame-sesame')
    client_options = {'password': 'sesame-sesame', 'protocol': 2}

    def test_sessions_are_stored_and_read(self):
        url = 'redis://:sesame-sesame@127.0.0.1:%d/0' % self.server.port
        store, session_id = self.stored_session(url)
        self.assertFalse(store.client.slot(
            redisstore.KEY % session_id).connection.tracking)
        loaded, trips = self.round_trips(store.load, session_id)
        self.assertEqual((loaded['n'], trips), (1, 1))


class UnixSocketTests(RedisFixture, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.socket_dir = tempfile.mkdtemp()
        cls.path = os.path.join(cls.socket_dir, 'redis.sock')
        cls.server_args = ('--unixsocket', cls.path)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.socket_dir, ignore_errors=True)

    def test_a_unix_socket_url(self):
        store, session_id = self.stored_session('unix://%s?db=3' % self.path)
        self.redis.execute_command('SELECT', 3)
        self.assertTrue(self.redis.exists(redisstore.KEY % session_id))
        self.assertEqual(store.load(session_id)['n'], 1)


class ReplyTypesTests(RedisFixture, unittest.TestCase):
    """Every RESP3 reply type, as Redis's ``DEBUG PROTOCOL`` sends it."""

    server_args = ('--enable-debug-command', 'yes')

    def test_reply_types(self):
        settings = redisclient.parse_url(self.server.url)
        connection = redisclient.Connection(
            settings, lambda keys: None, channel='test.1')
        self.addCleanup(connection.close)
        self.assertTrue(connection.tracking)

        def protocol(kind):
            return connection.execute('DEBUG', 'PROTOCOL', kind)

        self.assertEqual(protocol('string'), b'Hello World')
        self.assertEqual(protocol('integer'), 12345)
        self.assertIsNone(protocol('null'))
        self.assertEqual(protocol('double'), 3.141)
        self.assertEqual(protocol('bignum'),
                         1234567999999999999999999999999999999)
        self.assertIs(protocol('true'), True)
        self.assertIs(protocol('false'), False)
        self.assertEqual(protocol('verbatim'),
                         b'This is a verbatim\nstring')
        self.assertEqual(protocol('map'), {0: False, 1: True, 2: False})
        self.assertEqual(sorted(protocol('set')), [0, 1, 2])
        self.assertEqual(protocol('attrib'), b'Some real reply following '
                                             b'the attribute')
        with self.assertRaises(redisclient.ReplyError):
            connection.execute('NO-SUCH-COMMAND')
        # The connection is still in step after an error.
        self.assertEqual(connection.execute('PING'), b'PONG')


def self_signed_certificate(directory):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, '127.0.0.1')])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                       critical=True)
        .sign(key, hashes.SHA256()))
    cert_path = os.path.join(directory, 'redis.crt')
    key_path = os.path.join(directory, 'redis.key')
    with open(cert_path, 'wb') as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, 'wb') as f:
        f.write(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
    return cert_path, key_path


class TLSTests(RedisFixture, unittest.TestCase):
    """``rediss://``: TLS, with the server's certificate checked."""

    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp()
        cls.certificate, key = self_signed_certificate(cls.directory)
        cls.client_options = {'host': '127.0.0.1', 'ssl': True,
                              'ssl_ca_certs': cls.certificate}
        cls.server = servers.RedisServer()
        cls.server.extra_args = [
            '--port', '0', '--tls-port', str(cls.server.port),
            '--tls-cert-file', cls.certificate, '--tls-key-file', key,
            '--tls-ca-cert-file', cls.certificate,
            '--tls-auth-clients', 'no']
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.directory, ignore_errors=True)

    def url(self, query):
        return 'rediss://127.0.0.1:%d/0?%s' % (self.server.port, query)

    def test_sessions_over_tls_with_the_cache(self):
        store, session_id = self.stored_session(self.url(
            'ssl_ca_certs=%s' % self.certificate))
        loaded, trips = self.round_trips(store.load, session_id)
        self.assertEqual((loaded['n'], trips), (1, 0))
        self.redis.set(redisstore.KEY % session_id,
                       pickle.dumps(store.encode(record(n=2))))
        self.redis.ping()
        self.assertEqual(store.load(session_id)['n'], 2)

    def test_an_unknown_certificate_is_refused(self):
        store = self.make_store(url=self.url('socket_timeout=5'))
        with self.assertRaises(ssl.SSLError):
            store.load(secrets.token_hex(16))
        unchecked = self.make_store(url=self.url('ssl_cert_reqs=none'))
        self.assertIsNone(unchecked.load(secrets.token_hex(16)))


class PasswordTests(RedisFixture, unittest.TestCase):

    server_args = ('--requirepass', 'sesame-sesame')
    client_options = {'password': 'sesame-sesame', 'db': 2}

    def test_the_password_of_the_url_is_sent(self):
        url = 'redis://:sesame-sesame@127.0.0.1:%d/2' % self.server.port
        store, session_id = self.stored_session(url)
        self.assertTrue(self.redis.exists(redisstore.KEY % session_id))
        self.assertEqual(store.load(session_id)['n'], 1)

    def test_a_wrong_password_is_a_clear_error(self):
        url = 'redis://:wrong@127.0.0.1:%d/0' % self.server.port
        store = self.make_store(url=url)
        with self.assertRaisesRegex(ConnectionError, 'refused'):
            store.load(secrets.token_hex(16))


class AccessListTests(RedisFixture, unittest.TestCase):
    """Users whose access lists refuse the registry of caches or the
    cache's channel."""

    def user(self, name, **rules):
        self.redis.acl_setuser(name, enabled=True, passwords=['+sesame'],
                               commands=['+@all'], **rules)
        return 'redis://%s:sesame@127.0.0.1:%d/0' % (name, self.server.port)

    def test_a_user_who_may_not_subscribe_caches_and_writers_wait(self):
        # Redis 7 gives new users no channels.  The cache enters the
        # registry without one: every writer waits for the notices.
        url = self.user('nochannels', keys=['*'], reset_channels=True)
        store, session_id = self.stored_session(url)
        self.assertEqual(self.redis.smembers(redisclient.CACHES_KEY),
                         {redisclient.UNNAMED_CACHE.encode()})
        loaded, trips = self.round_trips(store.load, session_id)
        self.assertEqual((loaded['n'], trips), (1, 0))
        other = self.make_store(cache_size=0)
        self.assertEqual(self.pings(other.merge, session_id,
                                    lambda old: dict(old or {}, n=2)), 1)
        self.assertEqual(store.load(session_id)['n'], 2)

    def test_a_user_who_may_not_read_the_registry_waits(self):
        # It cannot tell whether other processes cache: no cache of its
        # own, and it waits for the notices of its writes.
        url = self.user('sessionsonly', keys=['beaker_cache:*:session'],
                        channels=['*'])
        store, session_id = self.stored_session(url)
        slot = store.client.slot(redisstore.KEY % session_id)
        self.assertFalse(slot.connection.tracking)
        self.assertEqual(self.pings(store.merge, session_id,
                                    lambda old: dict(old, n=2)), 1)
        loaded, trips = self.round_trips(store.load, session_id)
        self.assertEqual((loaded['n'], trips), (2, 1))


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

    def test_other_schemes_and_missing_sockets(self):
        with self.assertRaisesRegex(ValueError, 'not a redis://'):
            redisclient.parse_url('http://127.0.0.1/')
        settings = redisclient.parse_url('unix:///nonexistent/redis.sock')
        with self.assertRaises(OSError):
            redisclient.Connection(settings)

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
