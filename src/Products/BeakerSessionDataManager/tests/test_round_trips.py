"""Round trips to the store per request, counted on the real server.

Redis counts them itself: ``INFO stats`` has ``total_reads_processed``
(one per batch of commands a client sends, i.e. per round trip) and
``INFO commandstats`` the calls of each command, including those a script
makes inside the server.  Each test resets the counters (``CONFIG
RESETSTAT``), publishes one request and reads them; the test's own two
commands (the reset and the ``INFO``) are subtracted.  memcached's
``stats`` count commands, each of which is a round trip for
python-memcached.  PostgreSQL is reached through a proxy that lists the
statements psycopg2 sends, one message and one answer each.  No timing:
these are counts.
"""
import functools
import secrets
import socket
import threading
import time

import redis
import webtest
from beaker.middleware import SessionMiddleware
from beaker.session import Session
from redis.cluster import RedisCluster

from Products.BeakerSessionDataManager import namespaces
from Products.BeakerSessionDataManager import testing
from Products.BeakerSessionDataManager.config import SessionConfiguration
from Products.BeakerSessionDataManager.interfaces import SessionValueError
from Products.BeakerSessionDataManager.memcachedstore import MemcachedStore
from Products.BeakerSessionDataManager.redisclient import CACHES_KEY
from Products.BeakerSessionDataManager.redisstore import \
    CLUSTER_COMPARE_AND_SET
from Products.BeakerSessionDataManager.redisstore import COMPARE_AND_SET
from Products.BeakerSessionDataManager.redisstore import RedisStore
from Products.BeakerSessionDataManager.store import BeakerStore
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests import stores
from Products.BeakerSessionDataManager.tests.test_conformance import \
    PublishingTestCase


SECRET = secrets.token_urlsafe(36)


def dedicated_redis():
    """Settings of a Redis store on a server nobody else uses."""
    server = servers.RedisServer().start()
    settings = {'session.type': 'ext:redis', 'session.url': server.url,
                'session.secret': SECRET}
    return settings, server.cleanup


def dedicated_memcached():
    server = servers.MemcachedServer().start()
    settings = {'session.type': 'ext:memcached',
                'session.url': server.address, 'session.secret': SECRET}
    return settings, server.cleanup


def counted_postgresql():
    """Settings of an SQL store on PostgreSQL, through a proxy that counts
    the queries; the proxy is ``COUNTERS['postgresql']``."""
    url = servers.postgresql_url()
    counter = COUNTERS['postgresql'] = servers.PostgreSQLQueryCounter(
        *servers.host_and_port(url))
    table_name = servers.unique_name()
    settings = {'session.type': 'ext:database',
                'session.url': counter.url(url),
                'session.table_name': table_name, 'session.secret': SECRET}
    return settings, functools.partial(
        stores.drop_table, url, table_name, counter.close)


def shared_redis_cluster():
    """Settings of a Redis Cluster store on the suite's cluster, which
    nobody else uses while a test runs."""
    settings = {'session.type': 'ext:rediscluster',
                'session.url': servers.shared_redis_cluster().urls,
                'session.secret': SECRET}
    return settings, lambda: None


COUNTERS = {}
REDIS_TESTING = testing.store_functional_testing(
    'RoundTripsRedis', dedicated_redis)
REDIS_CLUSTER_TESTING = testing.store_functional_testing(
    'RoundTripsRedisCluster', shared_redis_cluster)
POSTGRESQL_TESTING = testing.store_functional_testing(
    'RoundTripsPostgreSQL', counted_postgresql)
MEMCACHED_TESTING = testing.store_functional_testing(
    'RoundTripsMemcached', dedicated_memcached)


def redis_counts(clients):
    """(round trips, {command: calls}) of the servers of ``clients``
    (redis-py's) since their ``CONFIG RESETSTAT``, without our own two
    ``INFO`` on each (the reset counts itself, not its read)."""
    trips, commands = 0, {}
    for client in clients:
        for name, value in client.info('commandstats').items():
            name = name[len('cmdstat_'):]
            commands[name] = commands.get(name, 0) + value['calls']
        trips += client.info('stats')['total_reads_processed'] - 2
    commands.pop('config|resetstat', None)
    commands.pop('info', None)
    return trips, commands


class Counting(PublishingTestCase):
    """A counter, a reader and a page that ignores the session."""

    def setUp(self):
        super().setUp()
        self.configuration = self.layer['beaker_configuration']
        self.store = self.configuration.store
        self.addCounter()
        self.addScript('read', '''\
session = container.REQUEST.SESSION
return '%s %s' % (session.get('count'), session.get('recent'))
''')
        self.addScript('untouched', 'return "no session here"')
        self.addScript('cart', '''\
session = container.REQUEST.SESSION
session['recent'] = ['page %d' % n for n in range(3)]
return 'ok'
''')

    def counted(self, browser, path):
        """What publishing ``path`` cost on the store."""
        self.reset()
        self.get(browser, path)
        return self.counts()

    def age(self, session_id, seconds):
        stores.age(self.store, session_id, seconds)


# What a writing request sends: one EVALSHA, which runs the GET, SET and
# EXISTS inside Redis and reads the registry of caches (SMEMBERS), where
# it finds no other process's (redisclient.CACHES_KEY).
WRITE = {'evalsha': 1, 'get': 1, 'set': 1, 'exists': 1, 'smembers': 1}
# With another process's cache there (its channel has a subscriber), the
# script also draws a channel at random and looks at it, and a PING
# follows, which returns once Redis has told that cache
# (redisclient.Slot.sync).
WRITE_SEEN_BY_OTHERS = dict(
    WRITE, **{'pubsub|numsub': 2, 'srandmember': 1, 'ping': 1})


class RedisRoundTrips(Counting):

    layer = REDIS_TESTING

    def setUp(self):
        super().setUp()
        self.client = redis.Redis.from_url(self.store.url)
        self.addCleanup(self.client.close)

    def reset(self):
        # Every connection of the store made and the script loaded
        # beforehand, as in a Zope that has served a while: no request's.
        for slot in self.store.client.slots:
            with slot.lock:
                slot._connection()
        self.client.script_load(COMPARE_AND_SET)
        self.client.config_resetstat()

    def counts(self):
        return redis_counts([self.client])

    def test_untouched_page_costs_nothing(self):
        browser = self.browser()
        self.get(browser, '/count')
        self.assertEqual(self.counted(browser, '/untouched'), (0, {}))

    def test_reading_inside_the_write_granularity_costs_nothing(self):
        # The session this Zope wrote is in its client cache.
        browser = self.browser()
        self.get(browser, '/count')
        self.get(browser, '/cart')
        self.assertEqual(self.counted(browser, '/read'), (0, {}))

    def test_reading_what_another_client_wrote_is_one_get(self):
        browser = self.browser()
        session_id = self.session_id(browser)
        self.foreign_store().merge(
            session_id, lambda record: dict(record or {}, count=41))
        self.assertEqual(self.counted(browser, '/read'), (1, {'get': 1}))
        self.assertEqual(self.counted(browser, '/count'), (1, WRITE))

    def test_a_new_session_is_one_compare_and_set(self):
        self.assertEqual(self.counted(self.browser(), '/count'), (1, WRITE))

    def test_a_write_is_one_compare_and_set(self):
        # The record read was in the client cache.
        browser = self.browser()
        self.get(browser, '/count')
        self.assertEqual(self.counted(browser, '/count'), (1, WRITE))

    def test_a_write_waits_for_the_caches_of_other_processes(self):
        browser = self.browser()
        session_id = self.session_id(browser)
        other = self.caching_store()
        other.load(session_id)  # Its connection enters it in the registry.
        # Told of that, this process's connection checks once that its own
        # cache is still there (a SISMEMBER; test_redisclient).
        self.store.load(session_id)
        self.assertEqual(self.counted(browser, '/count'),
                         (2, WRITE_SEEN_BY_OTHERS))
        self.assertEqual(other.load(session_id)['count'], 2)

    def test_the_cache_of_a_process_gone_is_forgotten(self):
        browser = self.browser()
        session_id = self.session_id(browser)
        other = self.caching_store()
        other.load(session_id)
        self.store.load(session_id)  # The check that follows its entry.
        channel = other.client.channel
        for slot in other.client.slots:
            slot._drop()  # Closed, as by a process that ends.
        while self.client.pubsub_numsub(channel)[0][1]:
            time.sleep(0.01)  # Until Redis has seen the connection close.
        self.assertEqual(self.counted(browser, '/count'), (1, dict(
            WRITE, **{'pubsub|numsub': 1, 'srem': 1})))
        self.assertEqual(self.client.smembers(CACHES_KEY),
                         {self.store.client.channel.encode()})
        # That write of its own ended Redis's notices to the connection of
        # changes of the registry: its next read checks the registry once.
        self.assertEqual(self.counted(browser, '/count'),
                         (2, dict(WRITE, sismember=1)))
        self.assertEqual(self.counted(browser, '/count'), (1, WRITE))

    def test_caches_gone_do_not_pile_up_behind_a_live_one(self):
        # The search stops at the first cache of another process, which
        # most of the 50 gone come after; the channel drawn at random on
        # each write finds them.
        other = self.caching_store()
        other.load(secrets.token_hex(16))  # It enters the registry.
        self.client.sadd(CACHES_KEY, *[
            'beaker_cache:client_cache:gone.%d' % number
            for number in range(50)])
        session_id = secrets.token_hex(16)
        for count in range(1000):
            self.store.merge(session_id, lambda record: {'count': count})
        self.assertEqual(self.client.smembers(CACHES_KEY), {
            self.store.client.channel.encode(),
            other.client.channel.encode()})

    def test_reading_after_the_granularity_writes_the_access_time(self):
        browser = self.browser()
        session_id = self.session_id(browser)
        self.age(session_id, self.configuration.write_granularity + 5)
        self.assertEqual(self.counted(browser, '/read'), (1, WRITE))

    def test_losing_a_race_costs_one_more_compare_and_set(self):
        # Another writer came between our read and our write: the failed
        # compare-and-set answers its record; no GET, no lock.
        session_id = secrets.token_hex(16)
        self.store.merge(session_id, lambda record: {'a': 1})
        self.store.load(session_id)
        self.foreign_store().merge(
            session_id, lambda record: dict(record or {}, b=2))
        self.reset()
        self.store.merge(session_id, lambda record: dict(record or {}, c=3))
        self.assertEqual(self.counts(), (2, {
            'evalsha': 2, 'get': 2, 'set': 1, 'exists': 1, 'smembers': 1}))
        self.assertEqual(self.store.load(session_id),
                         {'a': 1, 'b': 2, 'c': 3})

    def foreign_store(self):
        """A store on the same Redis with a client of its own, as another
        Zope instance has."""
        return RedisStore(self.store.namespace_class,
                          self.store.namespace_args, client_cache_size=0)

    def caching_store(self):
        """A store with a client cache of its own, as another Zope
        instance has."""
        store = RedisStore(self.store.namespace_class,
                           self.store.namespace_args, client_cache_size=16)
        self.addCleanup(self.forget, store)
        return store

    def forget(self, store):
        for slot in store.client.slots:
            slot._drop()
        self.client.srem(CACHES_KEY, store.client.channel)

    def session_id(self, browser):
        self.get(browser, '/count')
        return self.configuration.cookie.verify(
            browser.cookies[self.configuration.cookie.name])


class Interplay:
    """The store keeps Beaker's keys and records: Beaker's sessions, its
    namespace manager (BeakerStore) and its middleware share them.  (A
    mixin: a subclass of a test class with a layer would set both layers
    up.)"""

    def beaker_options(self):
        """Beaker's options for the store's records."""
        raise NotImplementedError

    def settled(self):
        """Return once the store's client cache, if it has one, has heard
        of Beaker's writes so far: Beaker does not wait for that."""

    def test_beaker_reads_our_records_and_we_read_beakers(self):
        session_id = secrets.token_hex(16)
        self.store.merge(session_id, lambda record: {
            '_creation_time': time.time(), '_accessed_time': time.time(),
            'ours': 1})
        session = Session({}, id=session_id, use_cookies=False,
                          **self.beaker_options())
        self.assertEqual(session['ours'], 1)
        session['theirs'] = 2
        session.save()
        self.settled()
        self.assertEqual(self.store.load(session_id)['theirs'], 2)
        namespaces = BeakerStore(self.store.namespace_class,
                                 self.store.namespace_args)
        self.assertEqual(namespaces.load(session_id)['theirs'], 2)
        namespaces.merge(session_id, lambda record: dict(record, old=3))
        self.settled()
        self.assertEqual(self.store.load(session_id)['old'], 3)

    def test_a_session_of_beakers_middleware_continues_in_zope(self):
        def app(environ, start_response):
            session = environ['beaker.session']
            if 'from_zope' not in session:
                session['from_beaker'] = 1
                session.save()
            start_response('200 OK', [('Content-Type', 'text/plain')])
            return [str(session.get('from_zope')).encode()]

        options = {'session.' + key: value
                   for key, value in self.beaker_options().items()}
        beaker = webtest.TestApp(SessionMiddleware(app, options))
        beaker.get('/')
        browser = self.browser()
        name = self.configuration.cookie.name
        browser.set_cookie(name, beaker.cookies[name])
        self.addScript('continue', '''\
session = container.REQUEST.SESSION
session['from_zope'] = session['from_beaker'] + 1
return session.getContainerKey()
''')
        session_id = self.get(browser, '/continue')
        self.assertEqual(beaker.cookies[name][40:], session_id)
        self.assertEqual(beaker.get('/').text, '2')


class RedisClusterRoundTrips(Counting):
    """redis-py's cluster client sends each command to the node of its
    key: a read is one ``GET``, a write the compare-and-set script.
    Beaker's lock is not taken."""

    layer = REDIS_CLUSTER_TESTING

    def setUp(self):
        super().setUp()
        self.nodes = [node.client()
                      for node in servers.shared_redis_cluster().nodes]
        for node in self.nodes:
            self.addCleanup(node.close)

    def reset(self):
        # The cluster client connected to every node and the script on
        # each, as in a Zope that has served a while.
        self.store.cluster().ping(target_nodes=RedisCluster.PRIMARIES)
        for node in self.nodes:
            node.script_load(CLUSTER_COMPARE_AND_SET)
            node.config_resetstat()

    def counts(self):
        return redis_counts(self.nodes)

    def test_untouched_page_costs_nothing(self):
        browser = self.browser()
        self.get(browser, '/count')
        self.assertEqual(self.counted(browser, '/untouched'), (0, {}))

    def test_a_read_is_one_get(self):
        browser = self.browser()
        self.get(browser, '/count')
        self.get(browser, '/cart')
        self.assertEqual(self.counted(browser, '/read'), (1, {'get': 1}))

    def test_a_write_is_a_get_and_one_compare_and_set(self):
        browser = self.browser()
        self.get(browser, '/count')
        self.assertEqual(self.counted(browser, '/count'), (2, {
            'get': 2, 'evalsha': 1, 'set': 1, 'exists': 1}))

    def test_a_new_session_is_one_compare_and_set(self):
        self.assertEqual(self.counted(self.browser(), '/count'), (1, {
            'evalsha': 1, 'get': 1, 'set': 1, 'exists': 1}))

    def test_a_lock_left_behind_holds_no_write_up(self):
        # Beaker's lock of a process killed while it held it stayed for
        # 15 minutes, and every write of the session waited for it.
        browser = self.browser()
        self.get(browser, '/count')
        session_id = self.configuration.cookie.verify(
            browser.cookies[self.configuration.cookie.name])
        cluster = RedisCluster.from_url(self.store.namespace_args['urls']
                                        .split(',')[0])
        self.addCleanup(cluster.close)
        lock = 'beaker_lock:beaker_cache:%s:session' % session_id
        cluster.set(lock, b'a-process-gone', ex=900)
        self.addCleanup(cluster.delete, lock)
        written = []
        writer = threading.Thread(
            target=lambda: written.append(self.get(browser, '/count')),
            daemon=True)
        writer.start()
        writer.join(30)
        self.assertEqual(written, ['2'])


class RedisInterplay(Interplay, Counting):
    """RedisStore and Beaker's RedisNamespaceManager."""

    layer = REDIS_TESTING

    def beaker_options(self):
        return {'type': 'ext:redis', 'url': self.store.url,
                'secret': SECRET, 'timeout': self.configuration.timeout}

    def settled(self):
        # A command sent after the write's answer, on any connection, is
        # answered after Redis has sent out the write's invalidations
        # (redisclient.Slot.sync).
        client = redis.Redis.from_url(self.store.url)
        try:
            client.ping()
        finally:
            client.close()


class RedisClusterInterplay(Interplay, Counting):
    """RedisClusterStore and Beaker's RedisClusterNamespaceManager."""

    layer = REDIS_CLUSTER_TESTING

    def beaker_options(self):
        return {'type': 'ext:rediscluster',
                'urls': self.store.namespace_args['urls'],
                'secret': SECRET, 'timeout': self.configuration.timeout}


class MemcachedRoundTrips(Counting):
    """python-memcached sends one command per round trip; a merge is one
    ``cas`` (or ``add``), no lock."""

    layer = MEMCACHED_TESTING

    def stats(self):
        host, port = self.configuration.options['url'].split(':')
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(b'stats\r\n')
            data = b''
            while not data.endswith(b'END\r\n'):
                data += connection.recv(65536)
        stats = {}
        for line in data.decode().splitlines():
            if line.startswith('STAT '):
                _, name, value = line.split(' ', 2)
                stats[name] = value
        return stats

    def reset(self):
        self.before = self.stats()

    def counts(self):
        after = self.stats()
        commands = {}
        for name in ('cmd_get', 'cmd_set', 'cmd_touch', 'delete_hits',
                     'delete_misses'):
            calls = int(after[name]) - int(self.before[name])
            if calls:
                commands[name] = calls
        return sum(commands.values()), commands

    def test_untouched_page_costs_nothing(self):
        browser = self.browser()
        self.get(browser, '/count')
        self.assertEqual(self.counted(browser, '/untouched'), (0, {}))

    def test_reading_inside_the_write_granularity_is_one_get(self):
        browser = self.browser()
        self.get(browser, '/cart')
        self.assertEqual(self.counted(browser, '/read'),
                         (1, {'cmd_get': 1}))

    def test_write_is_one_gets_and_one_cas(self):
        # load: gets (the item and its version); merge: cas.  memcached
        # counts gets among the gets, cas among the sets.
        browser = self.browser()
        self.get(browser, '/count')
        self.assertEqual(self.counted(browser, '/count'),
                         (2, {'cmd_get': 1, 'cmd_set': 1}))

    def test_new_session_is_one_add(self):
        self.assertEqual(self.counted(self.browser(), '/count'),
                         (1, {'cmd_set': 1}))

    def test_losing_a_race_costs_one_more_gets_and_cas(self):
        session_id = secrets.token_hex(16)
        self.store.merge(session_id, lambda record: {'a': 1})
        self.store.load(session_id)
        other = MemcachedStore(self.store.namespace_class,
                               self.store.namespace_args)
        other.load(session_id)
        other.merge(session_id, lambda record: dict(record, b=2))
        self.reset()
        self.store.merge(session_id, lambda record: dict(record, c=3))
        # cas (fails: another version), gets, cas.
        self.assertEqual(self.counts(), (3, {'cmd_get': 1, 'cmd_set': 2}))
        self.assertEqual(self.store.load(session_id),
                         {'a': 1, 'b': 2, 'c': 3})


def statement(query):
    """What a query is, without its table and values; the statements of a
    message that holds several, separated by ``; ``."""
    return '; '.join(map(one_statement, filter(None, (
        part.strip() for part in query.split(';')))))


def one_statement(query):
    words = query.split()
    if words[0] != 'SELECT':
        return words[0]
    what = words[1].split('(')[0]
    return 'SELECT ' + ('data' if what.endswith('.data') else what)


# A merge: one transaction under the session's lock with a bounded wait,
# in two messages (psycopg2 sends a message and waits for the answer).
LOCK_AND_READ = 'BEGIN; SET; SELECT pg_advisory_xact_lock; SELECT data'


class PostgreSQLRoundTrips(Counting):
    """psycopg2 sends each ``execute`` as one message and waits for the
    answer: a round trip each.  The proxy in front of the server lists
    them."""

    layer = POSTGRESQL_TESTING

    def setUp(self):
        super().setUp()
        self.counter = COUNTERS['postgresql']

    def reset(self):
        # The reading engine's connection made beforehand, as in a Zope
        # that has served a while (the merge's made by the first request).
        self.store.load(secrets.token_hex(16))
        del self.counter.queries[:]

    def counts(self):
        return [statement(query) for query in self.counter.queries]

    def test_untouched_page_costs_nothing(self):
        browser = self.browser()
        self.get(browser, '/count')
        self.assertEqual(self.counted(browser, '/untouched'), [])

    def test_reading_inside_the_write_granularity_is_one_select(self):
        browser = self.browser()
        self.get(browser, '/cart')
        self.assertEqual(self.counted(browser, '/read'), ['SELECT data'])

    def test_write_is_a_read_and_a_locked_transaction(self):
        browser = self.browser()
        self.get(browser, '/count')
        self.assertEqual(self.counted(browser, '/count'),
                         ['SELECT data', LOCK_AND_READ, 'WITH; COMMIT'])

    def test_new_session_is_a_locked_transaction(self):
        self.assertEqual(self.counted(self.browser(), '/count'),
                         [LOCK_AND_READ, 'WITH; COMMIT'])

    def test_a_connection_the_database_dropped_is_replaced(self):
        browser = self.browser()
        self.get(browser, '/count')
        self.counter.drop_connections()
        self.assertEqual(self.get(browser, '/read'), '1 None')
        self.counter.drop_connections()
        self.assertEqual(self.get(browser, '/count'), '2')

    def test_a_failing_read_is_not_sent_again(self):
        # Only a dropped connection is: an error of the query is the
        # answer.
        settings = dict(self.configuration.options)
        store = SessionConfiguration({
            'session.type': 'ext:database', 'session.secret': SECRET,
            'session.url': settings['url'],
            'session.table_name': servers.unique_name()}).store
        store.load(secrets.token_hex(16))  # Makes the table.
        stores.drop_table(servers.postgresql_url(),
                          store.namespace_args['table_name'])
        del self.counter.queries[:]
        with self.assertRaisesRegex(Exception, 'does not exist'):
            store.load(secrets.token_hex(16))
        self.assertEqual(self.counts(), ['SELECT data'])

    def test_a_merge_on_a_dropped_connection_is_sent_again(self):
        session_id = secrets.token_hex(16)
        self.store.merge(session_id, lambda record: {'n': 1})
        self.counter.drop_connections()
        del self.counter.queries[:]
        self.store.merge(session_id,
                         lambda record: dict(record, n=record['n'] + 1))
        self.assertEqual(self.store.load(session_id), {'n': 2})
        # On the new connection: the whole merge, once.
        self.assertEqual(self.counts()[-3:],
                         [LOCK_AND_READ, 'WITH; COMMIT', 'SELECT data'])

    def test_deleting_an_unknown_session_writes_nothing(self):
        session_id = secrets.token_hex(16)
        del self.counter.queries[:]
        self.store.delete(session_id)
        self.assertEqual(self.counts(), [LOCK_AND_READ, 'COMMIT'])
        self.assertIsNone(self.store.load(session_id))

    def test_a_failed_merge_ends_its_transaction_and_frees_the_lock(self):
        session_id = secrets.token_hex(16)
        self.store.merge(session_id, lambda record: {'n': 1})
        del self.counter.queries[:]

        def failing(record):
            raise SessionValueError('a value cannot be pickled')

        with self.assertRaises(SessionValueError):
            self.store.merge(session_id, failing)
        self.assertEqual(self.counts(), [LOCK_AND_READ, 'ROLLBACK'])
        # Another writer takes the lock at once.
        started = time.monotonic()
        self.store.merge(session_id, lambda record: {'n': 2})
        self.assertLess(time.monotonic() - started, namespaces.LOCK_WAIT)
        self.assertEqual(self.store.load(session_id), {'n': 2})
