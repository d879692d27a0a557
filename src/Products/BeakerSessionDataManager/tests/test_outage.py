"""A session store that dies under a running site, and comes back.

A real Zope instance serves a few browsers that keep paying (a ZODB write
and a session write in one transaction) while the store's server is killed
and started again on the same port.  Pages that do not use the session
must keep working, pages that do get a short 503, the log gets one error
line instead of one per request, no transaction commits the ZODB without
its session write, and the site recovers without a restart.
"""
import contextlib
import os
import re
import secrets
import signal
import socket
import threading
import time
import unittest

import psycopg2
import pytest
import redis

from Products.BeakerSessionDataManager import redisclient
from Products.BeakerSessionDataManager import status
from Products.BeakerSessionDataManager import storeoptions
from Products.BeakerSessionDataManager.config import SessionConfiguration
from Products.BeakerSessionDataManager.outages import OutageLog
from Products.BeakerSessionDataManager.outages import WarningLog
from Products.BeakerSessionDataManager.redisstore import KEY
from Products.BeakerSessionDataManager.tests import instance
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests.instance import \
    BEAKER_SESSION_DATA_MANAGER
from Products.BeakerSessionDataManager.tests.instance import ZopeInstance
from Products.BeakerSessionDataManager.tests.instance import python_script


CLIENTS = 4
LEDGERS = '''
for number in range(%d):
    name = 'ledger%%d' %% number
    if name not in app.objectIds():
        app.manage_addFolder(name)
        app[name].manage_addProperty('paid', 0, 'int')
''' % CLIENTS
# One transaction: a ZODB write (the ledger of this browser, which only
# this browser writes, so that there are no conflicts) and a session
# write (two keys that must always be equal).
PAY_SCRIPT = python_script('pay', '''\
    session = container.REQUEST.SESSION
    ledger = getattr(container, 'ledger' + client)
    ledger.manage_changeProperties(paid=ledger.getProperty('paid') + 1)
    n = session.get('n', 0) + 1
    session['n'] = n
    session['copy'] = n
    return 'paid'
    ''', params='client') + "app.pay._proxy_roles = ('Manager',)\n"
SHOW_SCRIPT = python_script('show', '''\
    session = container.REQUEST.SESSION
    ledger = getattr(container, 'ledger' + client)
    return '%s %s %s' % (ledger.getProperty('paid'), session.get('n'),
                         session.get('copy'))
    ''', params='client')
UNTOUCHED_SCRIPT = python_script('untouched', "return 'no session here'")
ERROR_LINE = re.compile(r'^\S+ \S+ ERROR .*Session store unavailable',
                        re.MULTILINE)


class Browser(threading.Thread):
    """Pays again and again with its own cookie until told to stop."""

    def __init__(self, zope, number):
        super().__init__(daemon=True)
        self.zope = zope
        self.number = number
        self.cookie = None
        self.paid = 0
        self.outcomes = []
        self.error = None
        self.stopping = threading.Event()

    def pay(self):
        status, set_cookie, body = self.zope.get(
            '/pay?client=%d' % self.number, self.cookie)
        if status == 200:
            assert body == 'paid', body
            self.paid += 1
            if set_cookie:
                self.cookie = set_cookie.split(';')[0]
        else:
            assert set_cookie is None, set_cookie
        self.outcomes.append((status, body))
        return status

    def run(self):
        try:
            while not self.stopping.is_set():
                self.pay()
                time.sleep(0.02)
        except BaseException as exc:
            self.error = exc

    def show(self):
        status, _, body = self.zope.get(
            '/show?client=%d' % self.number, self.cookie)
        assert status == 200, body
        return [None if value == 'None' else int(value)
                for value in body.split()]


def run_outage(zope, server, recovery_timeout, keeps_data):
    zope.setup(BEAKER_SESSION_DATA_MANAGER, LEDGERS, PAY_SCRIPT, SHOW_SCRIPT,
               UNTOUCHED_SCRIPT)
    zope.start()
    browsers = [Browser(zope, number) for number in range(CLIENTS)]
    for browser in browsers:
        assert browser.pay() == 200
        browser.start()
    time.sleep(1)

    server.kill()
    time.sleep(1)
    status, set_cookie, body = zope.get('/untouched', browsers[0].cookie)
    assert (status, body) == (200, 'no session here')
    for cookie in (browsers[0].cookie, None):
        status, set_cookie, body = zope.get('/pay?client=0', cookie)
        assert status == 503, body
        assert set_cookie is None
        assert 'session store is unavailable' in body, body
        assert len(body) < 400 and 'Traceback' not in body, body
        assert str(server.port) not in body, body
    time.sleep(1)

    server.start()
    deadline = time.monotonic() + recovery_timeout
    for browser in browsers:
        while not browser.outcomes or browser.outcomes[-1][0] != 200:
            assert browser.error is None, browser.error
            assert time.monotonic() < deadline, browser.outcomes[-3:]
            time.sleep(0.1)
    for browser in browsers:
        browser.stopping.set()
        browser.join(30)

    for browser in browsers:
        assert browser.error is None, browser.error
        statuses = {status for status, body in browser.outcomes}
        assert statuses == {200, 503}, statuses
        assert not [body for status, body in browser.outcomes
                    if status == 503
                    and 'session store is unavailable' not in body]
        paid, n, copy = browser.show()
        # The ZODB committed exactly the acknowledged payments: never
        # without the session write.
        assert paid == browser.paid
        # The record is always whole.
        assert n == copy
        if keeps_data:
            # Acknowledged session writes survived; a write that failed
            # (503) may still have landed if only the store's answer was
            # lost.
            assert browser.paid <= n <= browser.paid + 1, (browser.paid, n)

    log = zope.log('event.log')
    # The test takes less than the 60 seconds of one interval.
    assert len(ERROR_LINE.findall(log)) == 1, log
    assert 'Traceback' not in log, log
    assert 'answers again' in log, log


@pytest.fixture
def secret():
    return instance.new_secret()


def test_redis_outage(secret):
    # appendfsync always: what redis acknowledged survives the kill.
    with servers.RedisServer(None, '--appendonly', 'yes',
                             '--appendfsync', 'always') as redis:
        with ZopeInstance({'session.type': 'ext:redis',
                           'session.url': redis.url,
                           'session.secret': secret}) as zope:
            run_outage(zope, redis, recovery_timeout=20, keeps_data=True)


def test_redis_cluster_outage(secret):
    # Every node killed and started again: the cluster comes back with its
    # slots, without the records.
    with servers.RedisCluster() as cluster:
        with ZopeInstance({'session.type': 'ext:rediscluster',
                           'session.url': cluster.urls,
                           'session.secret': secret}) as zope:
            run_outage(zope, cluster, recovery_timeout=30, keeps_data=False)


def test_a_redis_cluster_node_that_stops_answering_times_out(secret):
    # A stopped process keeps its connections open and never answers: the
    # socket_timeout of the first URL, and one more try, end the wait.
    with servers.RedisCluster() as cluster:
        urls = cluster.urls.split(',')
        urls[0] += '?socket_timeout=0.5'
        store = SessionConfiguration({
            'session.type': 'ext:rediscluster', 'session.url': ','.join(urls),
            'session.secret': secret}).store
        session_id = secrets.token_hex(16)
        store.merge(session_id, lambda record: {'n': 1})
        node = store.cluster().get_node_from_key(KEY % session_id)
        server, = [server for server in cluster.nodes
                   if server.port == node.port]
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError):
                store.load(session_id)
            # Not the 10 seconds of the default, nor redis-py's 11 tries.
            assert time.monotonic() - started < 4
        finally:
            os.kill(server.process.pid, signal.SIGCONT)


def test_counting_redis_sessions_times_out(secret, monkeypatch):
    # The Status tab and ``beaker-sessions check`` count the sessions after
    # the probe: a Redis that stopped answering meanwhile ends the count
    # with the store's socket_timeout (default 10 s, here shorter), as any
    # session access, instead of holding the thread for good (Beaker's
    # client has no timeout unless the URL gives one).
    monkeypatch.setattr(redisclient, 'DEFAULT_SOCKET_TIMEOUT', 0.5)
    with servers.RedisServer(None) as server:
        configuration = SessionConfiguration({
            'session.type': 'ext:redis', 'session.url': server.url,
            'session.secret': secret})
        configuration.store.merge(secrets.token_hex(16),
                                  lambda record: {'n': 1})
        assert status.count_sessions(configuration) == 1
        outcome = []

        def count():
            try:
                outcome.append(status.count_sessions(configuration))
            except Exception as exc:
                outcome.append(exc)

        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            counting = threading.Thread(target=count, daemon=True)
            counting.start()
            counting.join(4)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError)


def test_memcached_outage(secret):
    # A restarted memcached has forgotten everything: the browsers get new
    # sessions.  python-memcached tries a failed server again only after
    # 30 seconds, hence the longer wait.
    with servers.MemcachedServer() as memcached:
        with ZopeInstance({'session.type': 'ext:memcached',
                           'session.url': memcached.address,
                           'session.secret': secret}) as zope:
            run_outage(zope, memcached, recovery_timeout=45,
                       keeps_data=False)


def test_postgresql_outage(secret):
    # The system's PostgreSQL, reached through a proxy that we cut.
    url = servers.postgresql_url()
    table = servers.unique_name()
    with servers.TcpProxy(5432) as proxy:
        with ZopeInstance({'session.type': 'ext:database',
                           'session.url': url.replace(
                               ':5432/', ':%d/' % proxy.port),
                           'session.table_name': table,
                           'session.secret': secret}) as zope:
            try:
                run_outage(zope, proxy, recovery_timeout=20, keeps_data=True)
            finally:
                zope.stop()
                drop_table(url, table)


def terminate_connections(application_name):
    """End the PostgreSQL connections of one instance, as a restart of
    the server does, without disturbing other users of the server."""
    import sqlalchemy
    engine = sqlalchemy.create_engine(servers.postgresql_url())
    with engine.begin() as connection:
        ended = connection.execute(sqlalchemy.text(
            'SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity '
            'WHERE application_name = :name'),
            {'name': application_name}).scalar()
    engine.dispose()
    assert ended, 'no connection of %s' % application_name


@pytest.mark.parametrize('store', ['memcached', 'redis', 'postgresql'])
def test_a_store_restarted_at_once_serves_the_next_requests(secret, store):
    # Each thread of the instance keeps connections to the store, which a
    # restart closes: the next request of each thread must not fail, nor
    # the ones after (python-memcached, left alone, marked the server
    # dead for 30 seconds in every thread).
    with contextlib.ExitStack() as stack:
        if store == 'memcached':
            server = stack.enter_context(servers.MemcachedServer())
            options = {'session.type': 'ext:memcached',
                       'session.url': server.address}
            restart, kept = (lambda: (server.kill(), server.start())), False
        elif store == 'redis':
            server = stack.enter_context(servers.RedisServer(
                None, '--appendonly', 'yes', '--appendfsync', 'always'))
            options = {'session.type': 'ext:redis', 'session.url': server.url}
            restart, kept = (lambda: (server.kill(), server.start())), True
        else:
            url = servers.postgresql_url()
            name = servers.unique_name()
            options = {'session.type': 'ext:database',
                       'session.url': url + '?application_name=' + name,
                       'session.table_name': name}
            stack.callback(drop_table, url, name)
            restart, kept = (lambda: terminate_connections(name)), True
        zope = stack.enter_context(ZopeInstance(
            dict(options, **{'session.secret': secret})))
        stack.callback(zope.stop)
        zope.setup(BEAKER_SESSION_DATA_MANAGER, instance.COUNTER_SCRIPT)
        zope.start()
        cookies = []
        for _ in range(12):
            status, set_cookie, body = zope.get('/count')
            assert (status, body) == (200, '1'), body
            cookies.append(set_cookie.split(';')[0])
        restart()
        # A restarted memcached has forgotten the sessions.
        for expected in ('2', '3') if kept else ('1', '2'):
            for number, cookie in enumerate(cookies):
                status, set_cookie, body = zope.get('/count', cookie)
                assert (status, body) == (200, expected), (number, body)
                if set_cookie:
                    cookies[number] = set_cookie.split(';')[0]
        assert 'Traceback' not in zope.log('event.log')


def drop_table(url, table):
    import sqlalchemy
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text('DROP TABLE IF EXISTS %s' % table))
    engine.dispose()


class OutageLogTests(unittest.TestCase):
    """One error line per store and interval; the others are counted."""

    def setUp(self):
        self.now = 1000.0
        self.log = OutageLog(interval=60, clock=lambda: self.now)

    def fail(self, store='redis store'):
        self.log.failed(store, 'read from', ConnectionError(
            'refused\n[SQL: SELECT ...]\n[parameters: secret data]'))

    def test_one_error_per_interval_and_store(self):
        with self.assertLogs('Products.BeakerSessionDataManager') as logged:
            for _ in range(100):
                self.fail()
                self.now += 0.5
            self.fail('memcached store')
            self.now += 11
            self.fail()
            self.log.succeeded('redis store')
            self.log.succeeded('redis store')
        messages = [record.getMessage() for record in logged.records]
        self.assertEqual([record.levelname for record in logged.records],
                         ['ERROR', 'ERROR', 'ERROR', 'INFO'])
        self.assertIn('could not read from the redis store: '
                      'ConnectionError: refused (further failures',
                      messages[0])
        self.assertIn('memcached store', messages[1])
        self.assertIn('and 99 more failures', messages[2])
        self.assertIn('redis store answers again', messages[3])
        self.assertNotIn('secret data', ' '.join(messages))


def load_or_error(store, seconds):
    """What ``store`` answers for a session in a thread of its own (a
    record or the exception), failing the test if it still waits after
    ``seconds``."""
    outcome = []

    def load():
        try:
            outcome.append(store.load(secrets.token_hex(16)))
        except Exception as exc:
            outcome.append(exc)

    reading = threading.Thread(target=load, daemon=True)
    reading.start()
    reading.join(seconds)
    assert len(outcome) == 1, 'still waiting after %s s' % seconds
    return outcome[0]


class WarningLogTests(unittest.TestCase):
    """One warning line per kind and interval; the others are counted."""

    def test_one_warning_per_interval_and_kind(self):
        now = [1000.0]
        log = WarningLog(interval=60, clock=lambda: now[0])
        with self.assertLogs('Products.BeakerSessionDataManager') as logged:
            for _ in range(100):
                log.warn('signature', 'A cookie is signed with %s', 'X')
                now[0] += 0.5
            log.warn('undecodable', 'A record')
            now[0] += 11
            log.warn('signature', 'A cookie is signed with %s', 'Y')
        messages = [record.getMessage() for record in logged.records]
        self.assertEqual([record.levelname for record in logged.records],
                         ['WARNING'] * 3)
        self.assertEqual(messages[0], 'A cookie is signed with X (further '
                         'ones are counted, not logged, for 60 seconds)')
        self.assertTrue(messages[1].startswith('A record ('), messages[1])
        self.assertEqual(messages[2], 'A cookie is signed with Y (99 more '
                         'since the last message; the next comes in 60 '
                         'seconds at the earliest)')


def test_a_postgresql_that_never_answers(secret, monkeypatch):
    # A server that accepts connections and never answers (a hung
    # PostgreSQL, the port of something else): the read fails after the
    # connect timeout instead of holding the request's thread for good.
    monkeypatch.setitem(storeoptions.LIBPQ_CONNECT_ARGS, 'connect_timeout', 2)
    with socket.socket() as silent:
        silent.bind(('127.0.0.1', 0))
        silent.listen(16)
        store = SessionConfiguration({
            'session.type': 'ext:database',
            'session.url': 'postgresql+psycopg2://zope@127.0.0.1:%d/sessions'
                           % silent.getsockname()[1],
            'session.secret': secret}).store
        assert 'timeout expired' in str(load_or_error(store, 30))


def test_a_postgresql_host_gone_from_the_network(secret, monkeypatch):
    # Packets to the server are dropped without an answer (its host crashed,
    # or lost its cable): the read fails once the query has gone
    # unacknowledged for the user timeout, and the reconnection after the
    # connect timeout, instead of waiting for TCP's retransmissions, a
    # quarter of an hour.
    if storeoptions.libpq_version('psycopg2') < 120000:
        servers.unavailable('libpq 12 or newer is needed for '
                            'tcp_user_timeout')
    monkeypatch.setitem(storeoptions.LIBPQ_USER_TIMEOUT, 'tcp_user_timeout',
                        2000)
    monkeypatch.setitem(storeoptions.LIBPQ_CONNECT_ARGS, 'connect_timeout', 2)
    url = servers.postgresql_url()
    table = servers.unique_name()
    with servers.VanishingHost(5432) as host:
        store = SessionConfiguration({
            'session.type': 'ext:database',
            'session.url': url.replace('127.0.0.1:5432', '%s:%d'
                                       % host.address),
            'session.table_name': table,
            'session.secret': secret}).store
        try:
            assert store.load(secrets.token_hex(16)) is None
            host.vanish()
            # The ping of the pooled connection timed out; connecting
            # again fails as the host is not there.
            error = load_or_error(store, 60)
            assert isinstance(error, psycopg2.OperationalError), error
        finally:
            drop_table(url, table)
