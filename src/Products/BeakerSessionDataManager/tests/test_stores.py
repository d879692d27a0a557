"""Every server-side store, against its real server: the merge lock,
expiry, store TTLs, a dead memcached node, unreachable stores.

The conformance scenarios run on every store in test_conformance; these
are the properties that differ from store to store.
"""
import gc
import logging
import os
import secrets
import socket
import threading
import time
import unittest
import warnings

import pytest
from beaker.cache import clsmap
from beaker.session import Session

import transaction
from OFS.SimpleItem import SimpleItem
from ZODB.POSException import ConflictError

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager import namespaces
from Products.BeakerSessionDataManager import regenerate_session
from Products.BeakerSessionDataManager import testing
from Products.BeakerSessionDataManager.interfaces import ConfigurationError
from Products.BeakerSessionDataManager.namespaces import LockTimeout
from Products.BeakerSessionDataManager.session import BeakerSessionData
from Products.BeakerSessionDataManager.store import RECORD_KEY
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests import stores
from Products.BeakerSessionDataManager.tests.test_conformance import \
    PublishingTestCase


WRITERS = 4
MERGES_PER_WRITER = 12
DAY = 24 * 3600
LOGGER = 'Products.BeakerSessionDataManager'


def new_id():
    return secrets.token_hex(16)


def second_store(store):
    """The same store as another Zope instance would open it."""
    return type(store)(store.namespace_class, store.namespace_args,
                       data_dir=store.data_dir, timeout=store.timeout,
                       name=store.name)


def retry_conflicts(test):
    """Let ZPublisher retry a ConflictError during ``test``, as zope.conf's
    max-conflict-retries makes it do at start-up."""
    from ZPublisher.HTTPRequest import HTTPRequest
    test.addCleanup(setattr, HTTPRequest, 'retry_max_count',
                    HTTPRequest.retry_max_count)
    HTTPRequest.retry_max_count = 3


class FailsAfterTheSession:
    """A data manager that votes after the session writer and fails, as
    zope.sqlalchemy's does (sort key ``~sqlalchemy:``: it commits the
    database in its vote) when the database refuses the commit: a
    serialization failure, which ZPublisher retries."""

    transaction_manager = transaction.manager

    def __init__(self, meanwhile=None):
        self.meanwhile = meanwhile

    def sortKey(self):
        return '~sqlalchemy:%d' % id(self)

    def tpc_vote(self, txn):
        if self.meanwhile is not None:
            self.meanwhile()
        raise ConflictError('could not serialize access')

    def abort(self, txn):
        pass

    tpc_begin = commit = tpc_abort = tpc_finish = abort


class FailingCommitPage(SimpleItem):
    """Counts in the session (or invalidates it); the commit of the first
    attempt fails after the session was written, and ZPublisher retries."""

    attempts = []
    meanwhile = None

    def __call__(self, REQUEST, invalidate=False, login=False):
        """Publishable."""
        session = REQUEST.SESSION
        self.attempts.append((session.getContainerKey(), dict(session)))
        first = len(self.attempts) == 1
        if login:
            regenerate_session(REQUEST)
        if invalidate and first:
            session.invalidate()
        elif not invalidate:
            session['count'] = session.get('count', 0) + 1
            session['attempt-%d' % len(self.attempts)] = True
        if first:
            transaction.get().join(FailsAfterTheSession(self.meanwhile))
        return 'ok'


class StoreTests:
    """What every store must do; run on each store by ``on_store``."""

    def setUp(self):
        super().setUp()
        self.configuration = self.layer['beaker_configuration']
        self.store = self.configuration.store

    def addCounter(self):
        self.addScript('count', '''\
session = container.REQUEST.SESSION
session['count'] = session.get('count', 0) + 1
return '%s %s' % (session['count'], session.getContainerKey())
''')

    def age(self, session_id, seconds):
        """Make the session's last access ``seconds`` older."""
        stores.age(self.store, session_id, seconds)

    def test_concurrent_merges_of_different_keys_lose_none(self):
        # Two store objects (two instances) and several threads write
        # their own keys into one session; a merge reads, waits a little
        # (the window another writer would use) and writes.
        session_id = new_id()
        both = [self.store, second_store(self.store)]
        errors = []

        def writer(number):
            store = both[number % 2]
            try:
                for merge in range(MERGES_PER_WRITER):
                    def apply(record, key='w%d-%02d' % (number, merge)):
                        record = dict(record or {})
                        time.sleep(0.002)
                        record[key] = number
                        record['_accessed_time'] = time.time()
                        return record
                    store.merge(session_id, apply)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=writer, args=(number,))
                   for number in range(WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        stored = self.store.load(session_id)
        expected = {'w%d-%02d' % (number, merge)
                    for number in range(WRITERS)
                    for merge in range(MERGES_PER_WRITER)}
        self.assertEqual(errors, [])
        self.assertEqual(expected - set(stored), set())

    def failing_commit(self, meanwhile=None):
        """A browser with a session counted once, and the page."""
        retry_conflicts(self)
        FailingCommitPage.attempts = []
        FailingCommitPage.meanwhile = staticmethod(meanwhile)
        self.app._setObject('failing', FailingCommitPage())
        self.addCounter()
        browser = self.browser()
        session_id = self.get(browser, '/count').split()[1]
        return browser, session_id

    def user_keys(self, session_id):
        record = self.store.load(session_id) or {}
        return {key: value for key, value in record.items()
                if not key.startswith('_')}

    def test_a_commit_failing_after_the_session_write_takes_it_back(self):
        # The retry starts from the session as it was, and what is stored
        # is the retry's write alone.
        browser, session_id = self.failing_commit()
        self.get(browser, '/failing')
        self.assertEqual(FailingCommitPage.attempts,
                         [(session_id, {'count': 1})] * 2)
        self.assertEqual(self.user_keys(session_id),
                         {'count': 2, 'attempt-2': True})

    def test_taking_a_write_back_keeps_later_writes_of_others(self):
        # Another request writes between our write and the failure: its
        # keys stay, and so does its value of a key we had written.
        def meanwhile():
            second_store(self.store).merge(
                session_id,
                lambda record: dict(record or {}, count=10, other=1))
        browser, session_id = self.failing_commit(meanwhile)
        self.get(browser, '/failing')
        self.assertEqual(FailingCommitPage.attempts[1][1],
                         {'count': 10, 'other': 1})
        self.assertEqual(self.user_keys(session_id),
                         {'count': 11, 'other': 1, 'attempt-2': True})

    def test_taking_back_an_invalidation_and_a_new_session(self):
        browser, session_id = self.failing_commit()
        self.get(browser, '/failing', invalidate=1)
        self.assertEqual(FailingCommitPage.attempts,
                         [(session_id, {'count': 1})] * 2)
        self.assertEqual(self.user_keys(session_id), {'count': 1})
        # A new browser: the session the first attempt made is gone.
        FailingCommitPage.attempts = []
        self.get(self.browser(), '/failing')
        (first, _), (second, _) = FailingCommitPage.attempts
        self.assertNotEqual(first, second)
        self.assertIsNone(self.store.load(first))
        self.assertEqual(self.user_keys(second),
                         {'count': 1, 'attempt-2': True})

    def test_taking_back_a_login(self):
        # Both writes of the login, the old id's record deleted and the
        # session under its new id, are taken back: the retry logs in
        # from the old id again.
        browser, session_id = self.failing_commit()
        self.get(browser, '/failing', login=1)
        self.assertEqual(FailingCommitPage.attempts,
                         [(session_id, {'count': 1})] * 2)
        self.assertIsNone(self.store.load(session_id))
        new_id = browser.cookies['beaker.session.id'][-32:]
        self.assertNotEqual(new_id, session_id)
        self.assertEqual(self.user_keys(new_id),
                         {'count': 2, 'attempt-2': True})

    def test_expired_session_reads_as_a_fresh_one(self):
        self.addCounter()
        self.addScript('by_key', '''\
data = context.session_data_manager.getSessionDataByKey(key)
return data is None and 'None' or repr(data.keys())
''', params='key')
        browser = self.browser()
        self.get(browser, '/count')
        count, old_id = self.get(browser, '/count').split()
        self.assertEqual(count, '2')
        self.age(old_id, self.configuration.timeout + 5)
        self.assertIsNone(self.store.load(old_id))
        count, new_id = self.get(browser, '/count').split()
        self.assertEqual(count, '1')
        self.assertNotEqual(new_id, old_id)
        self.assertEqual(self.get(browser, '/count').split(), ['2', new_id])
        manager = self.browser(manager=True)
        self.assertEqual(self.get(manager, '/by_key', key=old_id), 'None')

    def test_a_late_write_does_not_bring_an_expired_session_back(self):
        # A request loaded the session just before it expired and writes
        # one key after: the session stays ended, its id unknown.
        session_id = new_id()
        self.store.merge(session_id, lambda record: {
            '_creation_time': time.time(), '_accessed_time': time.time(),
            'old': 1, 'kept': 2})
        session = BeakerSessionData(session_id, self.store.load(session_id),
                                    store=self.store)
        session['kept'] = 3
        self.age(session_id, self.configuration.timeout + 5)
        transaction.commit()
        self.assertIsNone(self.store.load(session_id))

    def test_an_access_ahead_of_the_clock_is_reported(self):
        # Written by an instance whose clock is a minute ahead: the reader
        # says so (its sessions would end early, or at once).
        from Products.BeakerSessionDataManager.outages import warning_log
        self.addCleanup(setattr, warning_log, '_next_report', {})
        warning_log._next_report = {}
        session_id = new_id()
        ahead = time.time() + 60
        self.store.merge(session_id, lambda record: {
            '_creation_time': ahead, '_accessed_time': ahead, 'kept': 1})
        with self.assertLogs(LOGGER, logging.WARNING) as logged:
            self.assertEqual(self.store.load(session_id)['kept'], 1)
        [message] = [record.getMessage() for record in logged.records]
        self.assertRegex(message, "was last accessed 5[0-9] seconds ahead "
                         "of this instance's clock")

    def test_a_late_write_does_not_bring_a_deleted_session_back(self):
        # Another request (a logout, a login) ended the session while this
        # one, which had loaded it, was running: its id stays dead.
        session_id = new_id()
        self.store.merge(session_id, lambda record: {
            '_creation_time': time.time(), '_accessed_time': time.time(),
            'old': 1})
        session = BeakerSessionData(session_id, self.store.load(session_id),
                                    store=self.store)
        session['late'] = 2
        self.store.delete(session_id)
        transaction.commit()
        self.assertIsNone(self.store.load(session_id))

    def test_beaker_reads_our_records(self):
        """What we write, Beaker's own Session reads, and vice versa."""
        session_id = new_id()
        self.store.merge(session_id, lambda record: {
            '_creation_time': time.time(), '_accessed_time': time.time(),
            'ours': 1})
        namespace_class = self.store.namespace_class
        if self.configuration.type != 'ext:sqla':
            # ext:sqla is ours from zope.conf; Beaker's needs objects.
            namespace_class = clsmap[self.configuration.type]
        options = dict(self.store.namespace_args)
        options.pop('timeout', None)
        session = Session(
            {}, id=session_id, use_cookies=False,
            secret=self.configuration.options['secret'],
            namespace_class=namespace_class,
            data_dir=self.store.data_dir, **options)
        self.assertEqual(session['ours'], 1)
        session['theirs'] = 2
        session.save()
        self.assertEqual(self.store.load(session_id)['theirs'], 2)


def on_store(name):
    return type('TestStore_%s' % name, (StoreTests, PublishingTestCase), {
        'layer': stores.LAYERS[name],
        '__doc__': StoreTests.__doc__.replace('each store', name),
    })


for _name in stores.STORES:
    globals()['TestStore_%s' % _name] = on_store(_name)
del _name


class RedisTTL:
    """Redis keys expire with the session: timeout + 2 minutes."""

    key = 'beaker_cache:%s:session'

    def test_session_key_has_a_ttl(self):
        self.addScript('start', '''\
container.REQUEST.SESSION['x'] = 1
return container.REQUEST.SESSION.getContainerKey()
''')
        session_id = self.get(self.browser(), '/start')
        timeout = self.layer['beaker_configuration'].timeout
        ttl = self.client().ttl(self.key % session_id)
        self.assertGreater(ttl, timeout)
        self.assertLessEqual(ttl, timeout + 120)


class RedisTTLTests(RedisTTL, PublishingTestCase):

    layer = stores.LAYERS['redis']

    def client(self):
        import redis
        return redis.Redis.from_url(
            self.layer['beaker_configuration'].options['url'])


class RedisClusterTTLTests(RedisTTL, PublishingTestCase):

    layer = stores.LAYERS['rediscluster']

    def client(self):
        from redis.cluster import RedisCluster
        urls = self.layer['beaker_configuration'].options['url']
        return RedisCluster.from_url(urls.split(',')[0])


class CutShort:
    """A file of a session that a crash cut short in the middle of a
    write: its browser gets a new session, and keeps it."""

    def cut_short(self):
        """The browser and the id of its session, whose file ``path()``
        is cut in half."""
        StoreTests.addCounter(self)
        browser = self.browser()
        self.get(browser, '/count')
        count, session_id = self.get(browser, '/count').split()
        self.assertEqual(count, '2')
        path = self.path(session_id)
        os.truncate(path, os.path.getsize(path) // 2)
        count, new_id = self.get(browser, '/count').split()
        self.assertEqual(count, '1')
        self.assertNotEqual(new_id, session_id)
        self.assertEqual(self.get(browser, '/count').split(), ['2', new_id])
        return session_id


class FileCutShortTests(CutShort, PublishingTestCase):

    layer = stores.LAYERS['file']

    def path(self, session_id):
        return self.layer['beaker_configuration'].store.path(session_id)

    def test_its_browser_gets_a_new_session_and_keeps_it(self):
        self.cut_short()


class ConflictWhileReadingTests(PublishingTestCase):
    """A ConflictError of the ZODB while the session is read (resolving a
    reference to a ZODB object in it) is retried by Zope, as any other,
    not answered as a store outage (503)."""

    layer = stores.LAYERS['file']

    def test_the_request_is_retried(self):
        retry_conflicts(self)
        StoreTests.addCounter(self)
        browser = self.browser()
        session_id = self.get(browser, '/count').split()[1]
        store = self.layer['beaker_configuration'].store
        load = store.load
        conflicts = []

        def load_after_a_conflict(session_id):
            if not conflicts:
                conflicts.append(session_id)
                raise ConflictError('read conflict')
            return load(session_id)

        store.load = load_after_a_conflict
        self.addCleanup(delattr, store, 'load')
        self.assertEqual(self.get(browser, '/count').split(),
                         ['2', session_id])
        self.assertEqual(conflicts, [session_id])


class FileLockKeptTests(PublishingTestCase):
    """A process that holds a session's lock and never lets go (stopped
    with ^Z, in a debugger): its requests wait ``LOCK_WAIT`` seconds,
    then get a 503, instead of holding a thread each for good."""

    layer = stores.LAYERS['file']

    def test_the_sessions_requests_give_up_and_the_others_go_on(self):
        import fcntl
        StoreTests.addCounter(self)
        browser = self.browser()
        session_id = self.get(browser, '/count').split()[1]
        store = self.layer['beaker_configuration'].store
        self.addCleanup(setattr, namespaces, 'LOCK_WAIT', namespaces.LOCK_WAIT)
        namespaces.LOCK_WAIT = 0.3
        descriptor = os.open(store.lock_path(session_id), os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            response = browser.get('/count', status=503)
            self.assertIn('session store is unavailable', response.text)
            self.assertEqual(self.get(self.browser(), '/count').split()[0],
                             '1')
        finally:
            os.close(descriptor)
        self.assertEqual(self.get(browser, '/count').split(),
                         ['2', session_id])


class MariaDBRowLockKeptTests(PublishingTestCase):
    """On MySQL and MariaDB a merge locks the session's row (``SELECT ...
    FOR UPDATE``): a writer that holds it and does not go on (a request
    of Beaker's own middleware, an administrator's open transaction)
    holds the session's requests ``LOCK_WAIT`` seconds, then they get a
    503, as on the other stores; InnoDB would have them wait 50."""

    layer = stores.LAYERS['mariadb']

    def test_the_sessions_requests_give_up_and_the_others_go_on(self):
        import sqlalchemy as sa
        StoreTests.addCounter(self)
        browser = self.browser()
        session_id = self.get(browser, '/count').split()[1]
        configuration = self.layer['beaker_configuration']
        self.addCleanup(setattr, namespaces, 'LOCK_WAIT', namespaces.LOCK_WAIT)
        namespaces.LOCK_WAIT = 1
        engine = sa.create_engine(configuration.options['url'])
        self.addCleanup(engine.dispose)
        table = configuration.options['table_name']
        with engine.connect() as other_writer:
            other_writer.begin()
            other_writer.execute(sa.text(
                'SELECT data FROM %s WHERE namespace = :id FOR UPDATE'
                % table), {'id': session_id})
            started = time.monotonic()
            with self.assertLogs(LOGGER, logging.ERROR) as logged:
                response = browser.get('/count', status=503)
            # A second or so, not InnoDB's 50.
            self.assertLess(time.monotonic() - started, 20)
            self.assertIn('session store is unavailable', response.text)
            self.assertIn('the session was locked by another writer for '
                          'too long', logged.output[0])
            self.assertEqual(self.get(self.browser(), '/count').split()[0],
                             '1')
            other_writer.rollback()
        self.assertEqual(self.get(browser, '/count').split(),
                         ['2', session_id])


class DbmIndexCutShortTests(CutShort, PublishingTestCase):
    """A dbm.dumb index (``.dir``) that a crash cut short: Beaker fails on
    it for good, which was a 503 on every request of the session."""

    layer = stores.LAYERS['dbm']

    def path(self, session_id):
        store = self.layer['beaker_configuration'].store
        index = store._namespace(session_id).file + '.dir'
        if not os.path.exists(index):
            self.skipTest('the dbm module is not dbm.dumb')
        return index

    def test_its_browser_gets_a_new_session_and_keeps_it(self):
        session_id = self.cut_short()
        store = self.layer['beaker_configuration'].store
        # A write of the damaged session makes its file afresh.
        self.assertIsNone(store.load(session_id))
        with self.assertLogs(LOGGER, logging.WARNING) as logged:
            store.merge(session_id, lambda record: {'n': 1})
        self.assertIn('it is made afresh', logged.output[0])
        self.assertEqual(store.load(session_id), {'n': 1})


class UnpicklableData:
    """Stored data whose pickle this Python cannot load: written by Python
    2 (2.x of this product), or holding a class since removed; or that
    would run code if it were loaded.  Each store's class puts it where the
    store keeps the session (``damage``)."""

    # The pickle of an instance of no_such.module.x.C.
    GONE_CLASS = (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00"
                  b"\x8c\x10no_such.module.x\x94\x8c\x01C\x94\x93"
                  b"\x94)\x81\x94.")

    def assert_fresh_session_after(self, data):
        StoreTests.addCounter(self)
        browser = self.browser()
        self.get(browser, '/count')
        count, session_id = self.get(browser, '/count').split()
        self.assertEqual(count, '2')
        self.damage(session_id, data)
        count, new_id = self.get(browser, '/count').split()
        self.assertEqual(count, '1')
        self.assertNotEqual(new_id, session_id)
        self.assertEqual(self.get(browser, '/count').split(), ['2', new_id])

    def test_python_2_data(self):
        self.assert_fresh_session_after(stores.PYTHON2_ROW)

    def test_data_of_a_class_gone(self):
        self.assert_fresh_session_after(self.GONE_CLASS)

    def test_data_that_would_run_code(self):
        self.addCleanup(stores.CALLS.clear)
        self.assert_fresh_session_after(stores.RUNS_CODE)
        self.assertEqual(stores.CALLS, [])


class TestUnpicklableFile(UnpicklableData, PublishingTestCase):

    layer = stores.LAYERS['file']

    def damage(self, session_id, data):
        store = self.layer['beaker_configuration'].store
        with open(store.path(session_id), 'wb') as f:
            f.write(data)


class TestUnpicklableDbmValue(UnpicklableData, PublishingTestCase):

    layer = stores.LAYERS['dbm']

    def damage(self, session_id, data):
        store = self.layer['beaker_configuration'].store
        namespace = store._namespace(session_id)
        namespace.acquire_write_lock()
        try:
            namespace.dbm[RECORD_KEY] = data
        finally:
            namespace.release_write_lock()


class SqlRowUnpicklable(UnpicklableData):

    def damage(self, session_id, data):
        options = self.layer['beaker_configuration'].options
        stores.overwrite_rows(options['url'], options['table_name'],
                              [session_id], data)


for _name in stores.SQL_TYPES:
    globals()['TestUnpicklableSqlRow_%s' % _name] = type(
        'TestUnpicklableSqlRow_%s' % _name,
        (SqlRowUnpicklable, PublishingTestCase),
        {'layer': stores.LAYERS[_name]})
del _name


class RedisUnpicklable(UnpicklableData):

    def damage(self, session_id, data):
        import redis
        options = self.layer['beaker_configuration'].options
        urls = options['url'].split(',')
        client = (redis.Redis.from_url(urls[0]) if len(urls) == 1 else
                  redis.RedisCluster.from_url(urls[0]))
        try:
            client.set('beaker_cache:%s:%s' % (session_id, RECORD_KEY), data)
            # Wait, as this product's writers do (redisclient.Slot.sync),
            # until Redis has told the caches: it may answer the write
            # first.
            client.ping()
        finally:
            client.close()


class TestUnpicklableRedisValue(RedisUnpicklable, PublishingTestCase):

    layer = stores.LAYERS['redis']


class TestUnpicklableRedisClusterValue(RedisUnpicklable, PublishingTestCase):

    layer = stores.LAYERS['rediscluster']


class TestUnpicklableMemcachedItem(UnpicklableData, PublishingTestCase):
    """python-memcached unpickles an item whose flags say it is pickled."""

    layer = stores.LAYERS['memcached']

    def damage(self, session_id, data):
        from Products.BeakerSessionDataManager.memcachedstore import \
            MemcachedStore
        host, port = self.layer['beaker_configuration'].options['url'].split(
            ':')
        key = MemcachedStore.key(session_id).encode()
        # Flags 1: python-memcached's _FLAG_PICKLE.
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b'set %s 1 0 %d\r\n%s\r\n' % (key, len(data), data))
            self.assertEqual(sock.recv(64), b'STORED\r\n')


def memcached_expiry_times(address):
    """``{key: exptime}`` of every item of a memcached server, read with
    ``lru_crawler metadump`` (exptime is a Unix time, -1 for none)."""
    host, port = address.split(':')
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b'lru_crawler metadump all\r\n')
        data = b''
        while not data.endswith(b'END\r\n'):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    times = {}
    for line in data.decode().splitlines():
        fields = dict(field.split('=', 1) for field in line.split()
                      if '=' in field)
        if 'key' in fields:
            times[fields['key']] = int(fields['exp'])
    return times


class MemcachedExpiryTests(unittest.TestCase):
    """memcached items expire with the session, whatever the timeout."""

    def make_store(self, timeout):
        server = servers.shared_memcached()[0]
        settings, cleanup = stores.make_store('memcached', timeout=timeout)
        self.addCleanup(cleanup)
        store = config.SessionConfiguration(settings).store
        return server, store

    def expiry_of(self, server, session_id):
        return memcached_expiry_times(server.address).get(
            '%s_session' % session_id)

    def test_item_expires_with_the_session(self):
        server, store = self.make_store(timeout=600)
        session_id = new_id()
        before = time.time()
        store.merge(session_id, lambda record: {'_accessed_time': before})
        expiry = self.expiry_of(server, session_id)
        self.assertGreaterEqual(expiry, int(before) + 600 + 120 - 2)
        self.assertLessEqual(expiry, time.time() + 600 + 120 + 2)

    def test_timeout_over_30_days(self):
        # memcached reads such an expiry as a Unix time: sent as is, the
        # item would be gone at once.
        server, store = self.make_store(timeout=40 * DAY)
        session_id = new_id()
        before = time.time()
        store.merge(session_id, lambda record: {'_accessed_time': before})
        self.assertEqual(store.load(session_id), {'_accessed_time': before})
        expiry = self.expiry_of(server, session_id)
        self.assertGreaterEqual(expiry, int(before) + 40 * DAY + 120 - 2)
        self.assertLessEqual(expiry, time.time() + 40 * DAY + 120 + 2)


@pytest.mark.parametrize('name', ['sqlite', 'postgresql', 'mariadb'])
def test_a_lock_held_too_long_gives_a_clear_error(name, monkeypatch):
    settings, cleanup = stores.make_store(name)
    try:
        store = config.SessionConfiguration(settings).store
        session_id = new_id()
        store.merge(session_id, lambda record: {'x': 1})
        # Another writer holds the session's lock.
        holder = store._locked(store._namespace(session_id))
        holder.__enter__()
        try:
            monkeypatch.setattr(namespaces, 'LOCK_WAIT', 0.5)
            started = time.monotonic()
            with pytest.raises(LockTimeout) as caught:
                store.merge(session_id, lambda record: {'x': 2})
            # Bounded (MySQL's and MariaDB's InnoDB wait 50 s unless told).
            assert time.monotonic() - started < 20
        finally:
            holder.__exit__(None, None, None)
        assert 'locked by another writer' in str(caught.value)
        assert store.load(session_id) == {'x': 1}
    finally:
        cleanup()


def test_first_merges_of_a_session_at_once_on_mariadb():
    """Two merges of a session that has no row yet, at once: on MySQL and
    MariaDB both lock the gap where the row goes, and the second insert is
    a deadlock, whose victim the database rolls back.  It merges again,
    onto the row the other one wrote."""
    settings, cleanup = stores.make_store('mariadb')
    try:
        store = config.SessionConfiguration(settings).store
        session_id = new_id()
        both_read = threading.Barrier(2)
        errors = []

        def writer(key):
            first = [True]

            def apply(record):
                if first:
                    first.pop()
                    both_read.wait(10)
                return dict(record or {}, **{key: True})
            try:
                store.merge(session_id, apply)
            except Exception as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(key,))
                   for key in ('a', 'b')]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert store.load(session_id) == {'a': True, 'b': True}
    finally:
        cleanup()


def test_a_store_gone_closes_its_sql_connections():
    # A store a new configuration replaced (each test's): its pool's
    # connections close with it, instead of when they are garbage, which
    # Python 3.13 warns of for SQLite's (ResourceWarning: unclosed
    # database).
    import sqlite3
    settings, cleanup = stores.make_store('sqlite')
    try:
        store = config.SessionConfiguration(settings).store
        store.load(new_id())
        reader, _ = store.statements()
        pooled = reader.engine.raw_connection()
        connection = pooled.dbapi_connection
        pooled.close()  # Back to the pool, open.
        connection.execute('SELECT 1')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', ResourceWarning)
            del store, reader, pooled
            gc.collect()
        with pytest.raises(sqlite3.ProgrammingError, match='closed'):
            connection.execute('SELECT 1')
        assert [str(warning.message) for warning in caught] == []
    finally:
        cleanup()


class StoreErrorTestCase(PublishingTestCase):
    """Configure a store for one test, restoring the layer's after."""

    layer = testing.BEAKER_SESSIONS_FUNCTIONAL_TESTING

    def use(self, settings):
        previous = config._current
        self.addCleanup(setattr, config, '_current', previous)
        settings = dict(settings, **{'session.secret': secrets.token_hex(20)})
        return config.configure(settings)

    def addCounter(self):
        self.addScript('count', '''\
session = container.REQUEST.SESSION
session['count'] = session.get('count', 0) + 1
return '%s %s' % (session['count'], session.getContainerKey())
''')


class MemcachedPoolNodeDiesTests(StoreErrorTestCase):
    """A dead node of a pool costs the sessions it held, not the site.

    python-memcached hashes the keys of a server it cannot reach to the
    others (and tries it again 30 seconds later): the visitors whose
    sessions were on the dead node get a new, empty session; the others
    keep theirs.  With every node dead, pages that need a session get 503.
    """

    def holder(self, pool, session_id):
        """The index of the server holding ``session_id``."""
        import memcache
        for index, server in enumerate(pool):
            client = memcache.Client([server.address])
            try:
                if client.get('%s_session' % session_id) is not None:
                    return index
            finally:
                client.disconnect_all()
        return None

    def test_node_dies(self):
        pool = [servers.MemcachedServer().start() for _ in range(2)]
        for server in pool:
            self.addCleanup(server.cleanup)
        self.use({'session.type': 'ext:memcached',
                  'session.url': servers.memcached_url(pool)})
        self.addCounter()
        self.addScript('untouched', "return 'no session'")
        visitors = {0: [], 1: []}
        for _ in range(40):
            browser = self.browser()
            session_id = self.get(browser, '/count').split()[1]
            visitors[self.holder(pool, session_id)].append(
                (browser, session_id))
            if visitors[0] and visitors[1]:
                break
        self.assertTrue(visitors[0] and visitors[1], visitors)

        pool[0].kill()
        for browser, session_id in visitors[0]:
            count, new_id = self.get(browser, '/count').split()
            self.assertEqual(count, '1')
            self.assertNotEqual(new_id, session_id)
            self.assertEqual(self.get(browser, '/count').split(),
                             ['2', new_id])
        for browser, session_id in visitors[1]:
            self.assertEqual(self.get(browser, '/count').split(),
                             ['2', session_id])

        pool[1].kill()
        browser = visitors[1][0][0]
        with self.assertLogs(LOGGER, logging.ERROR):
            self.get(browser, '/count', status=503)
        self.assertEqual(self.get(browser, '/untouched'), 'no session')


class UnreachableStoreTests(StoreErrorTestCase):
    """A store that does not answer: a warning at start-up naming it and
    ``session.url``, then 503 (never a traceback) where a session is
    needed, while the other pages work."""

    def assertUnreachable(self, settings):
        configuration = self.use(settings)
        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            problem = config.warn_if_unreachable(configuration)
        self.assertTrue(problem)
        self.assertEqual(len(logs.records), 1)
        warning = logs.records[0].getMessage()
        self.assertIn(settings['session.type'], warning)
        self.assertIn('(session.url)', warning)
        self.assertIn('503', warning)

        self.addCounter()
        self.addScript('untouched', "return 'no session'")
        browser = self.browser()
        with self.assertLogs(LOGGER, logging.ERROR) as logs:
            response = browser.get('/count', status=503)
        self.assertNotIn('Traceback', response.text)
        self.assertIn('(session.url)', logs.records[0].getMessage())
        self.assertEqual(self.get(browser, '/untouched'), 'no session')

    def test_redis_on_a_closed_port(self):
        self.assertUnreachable({
            'session.type': 'ext:redis',
            'session.url': 'redis://127.0.0.1:%d/0' % servers.free_port()})

    def test_redis_cluster_on_closed_ports(self):
        self.assertUnreachable({
            'session.type': 'ext:rediscluster',
            'session.url': ','.join(
                'redis://127.0.0.1:%d' % servers.free_port()
                for _ in range(2))})

    def test_memcached_on_a_closed_port(self):
        self.assertUnreachable({
            'session.type': 'ext:memcached',
            'session.url': '127.0.0.1:%d' % servers.free_port()})

    def test_postgresql_database_that_does_not_exist(self):
        url = servers.postgresql_url().rsplit('/', 1)[0] + '/no_such_db'
        self.assertUnreachable({'session.type': 'ext:database',
                                'session.url': url})

    def test_reachable_store_gives_no_warning(self):
        settings, cleanup = stores.make_store('redis')
        self.addCleanup(cleanup)
        self.assertIsNone(config.warn_if_unreachable(self.use(settings)))


class StoreConfigurationTests(unittest.TestCase):
    """Mistakes in the store options stop start-up, naming the option."""

    def tearDown(self):
        config.reset()

    def configure(self, **options):
        settings = {'session.secret': secrets.token_hex(20)}
        settings.update({'session.' + name: value
                         for name, value in options.items()})
        return config.configure(settings)

    def assertRejected(self, option, text, **options):
        with self.assertRaises(ConfigurationError) as caught:
            self.configure(**options)
        message = str(caught.exception)
        self.assertTrue(message.startswith(option + ':'), message)
        self.assertIn(text, message)

    def test_url_is_required(self):
        for store_type in ('ext:redis', 'ext:rediscluster', 'ext:memcached',
                           'ext:database', 'ext:sqla'):
            self.assertRejected('session.url', store_type, type=store_type)

    def test_rediscluster_takes_url_or_urls(self):
        urls = 'redis://127.0.0.1:7000,redis://127.0.0.1:7001'
        for option in ('url', 'urls'):
            store = self.configure(type='ext:rediscluster',
                                   **{option: urls}).store
            self.assertEqual(store.namespace_args['urls'], urls)
            self.assertNotIn('url', store.namespace_args)
        self.assertRejected('session.urls', 'not in both',
                            type='ext:rediscluster', url=urls, urls=urls)
        self.assertRejected('session.url', 'only database 0',
                            type='ext:rediscluster',
                            url='redis://127.0.0.1:7000/3')

    def test_rediscluster_connection_options_from_zope_conf(self):
        # Strings, read as redis-py reads them in a URL: the store works.
        cluster = servers.shared_redis_cluster()
        store = self.configure(type='ext:rediscluster', url=cluster.urls,
                               socket_timeout='2.5',
                               retry_on_timeout='true').store
        session_id = new_id()
        store.merge(session_id, lambda record: {'n': 1})
        self.assertEqual(store.load(session_id)['n'], 1)
        pool = store.cluster().get_default_node().redis_connection
        self.assertEqual(
            pool.connection_pool.connection_kwargs['socket_timeout'], 2.5)
        self.assertRejected('session.socket_timeout', "'soon'",
                            type='ext:rediscluster', url=cluster.urls,
                            socket_timeout='soon')

    def test_bad_urls(self):
        self.assertRejected('session.url', 'redis://',
                            type='ext:redis', url='127.0.0.1:6379')
        self.assertRejected('session.url', 'SQLAlchemy URL',
                            type='ext:database', url='not a url')
        self.assertRejected('session.url', 'in-memory SQLite',
                            type='ext:sqla', url='sqlite://')

    def test_missing_database_driver_names_the_extra(self):
        self.assertRejected('session.url', 'driver',
                            type='ext:database', url='mysql://db/sessions')

    def test_memcached_client_module(self):
        store = self.configure(type='ext:memcached',
                               url='127.0.0.1:11211').store
        self.assertEqual(store.namespace_args['memcache_module'], 'memcache')
        self.assertRejected('session.memcache_module', 'python-memcached',
                            type='ext:memcached', url='127.0.0.1:11211',
                            memcache_module='bmemcached')

    def test_store_names_its_option(self):
        self.assertEqual(
            self.configure(type='ext:redis',
                           url='redis://:pw@127.0.0.1:1/0').store.name,
            'ext:redis session store at redis://***@127.0.0.1:1/0 '
            '(session.url)')
        self.assertEqual(self.configure(type='memory').store.name,
                         'memory session store')
        data_dir = os.path.join(os.sep, 'tmp', 'sessions')
        self.assertEqual(
            self.configure(data_dir=data_dir).store.name,
            'file session store at %s (session.data_dir)' % data_dir)
