"""Concurrent requests of one browser, through a real multi-threaded server.

Stock sessions keep whichever copy of the whole session was saved last, so
concurrent requests of one browser lose each other's writes (a third of
them in the measurement in the README).  Here every request writes its own
key after reading the session, many at once on one cookie, and every write
the server acknowledged must be in the session afterwards.
"""
import threading
import unittest

import pytest

import transaction
from OFS.SimpleItem import SimpleItem

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager.testing import \
    BEAKER_SESSIONS_FUNCTIONAL_TESTING
from Products.BeakerSessionDataManager.testing import browser
from Products.BeakerSessionDataManager.tests import instance
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests.instance import \
    BEAKER_SESSION_DATA_MANAGER
from Products.BeakerSessionDataManager.tests.instance import WRITE_SCRIPT
from Products.BeakerSessionDataManager.tests.instance import ZopeInstance
from Products.BeakerSessionDataManager.tests.instance import python_script


SERVER_THREADS = 8
CLIENTS = 16
REQUESTS_PER_CLIENT = 20

KEYS_SCRIPT = python_script('show_keys', '''\
    keys = container.REQUEST.SESSION.keys()
    keys.sort()
    return ' '.join(keys)
    ''')


def store_settings(store):
    if store == 'file':
        return {'session.type': 'file'}
    if store == 'redis':
        return {'session.type': 'ext:redis',
                'session.url': servers.shared_redis().url}
    if store == 'rediscluster':
        return {'session.type': 'ext:rediscluster',
                'session.url': servers.shared_redis_cluster().urls}
    return {'session.type': 'ext:memcached',
            'session.url': servers.memcached_url(servers.shared_memcached())}


def hammer(zope, cookie):
    """Many clients at once on one cookie, each writing its own keys.

    Returns the keys acknowledged with 200 and the other outcomes.
    """
    acknowledged = []
    failures = []
    start = threading.Barrier(CLIENTS)

    def client(number):
        start.wait()
        for request in range(REQUESTS_PER_CLIENT):
            key = 'c%02d-%03d' % (number, request)
            try:
                status, set_cookie, body = zope.get(
                    '/write?key=' + key, cookie)
            except OSError as exc:
                failures.append((key, repr(exc)))
                continue
            if status == 200 and body == 'ok' and set_cookie is None:
                acknowledged.append(key)
            else:
                failures.append((key, status, set_cookie, body[:300]))

    threads = [threading.Thread(target=client, args=(number,))
               for number in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return acknowledged, failures


@pytest.mark.parametrize(
    'store', ['file', 'redis', 'rediscluster', 'memcached'])
def test_concurrent_writes_on_one_cookie_are_all_kept(store):
    settings = dict(store_settings(store))
    settings['session.secret'] = instance.new_secret()
    with ZopeInstance(settings, threads=SERVER_THREADS) as zope:
        zope.setup(BEAKER_SESSION_DATA_MANAGER, WRITE_SCRIPT, KEYS_SCRIPT)
        zope.start()
        status, set_cookie, body = zope.get('/write?key=first')
        assert status == 200, body
        cookie = set_cookie.split(';')[0]

        acknowledged, failures = hammer(zope, cookie)

        status, _, body = zope.get('/show_keys', cookie)
        assert status == 200, body
        stored = set(body.split())
        lost = sorted(set(acknowledged) - stored)
        total = CLIENTS * REQUESTS_PER_CLIENT
        assert (len(acknowledged), failures[:5], lost[:10]) == (total, [], [])
        assert stored == set(acknowledged) | {'first'}


class ConflictingCommit(SimpleItem):
    """Changes itself and the session; the first time, another transaction
    changes it too and commits first, so that this one's ZODB commit
    raises a ConflictError (after the page ran, as in production)."""

    attempts = []

    def __call__(self, REQUEST):
        """Publishable."""
        session = REQUEST.SESSION
        self.attempts.append(session.get('n'))
        session['n'] = session.get('n', 0) + 1
        session['attempt-%d' % len(self.attempts)] = True
        self.hits = getattr(self, 'hits', 0) + 1
        if len(self.attempts) == 1:
            other_transaction = transaction.TransactionManager()
            connection = self._p_jar.db().open(other_transaction)
            connection.get(self._p_oid).hits = 1000
            other_transaction.commit()
            connection.close()
        return 'n=%s' % session['n']


class ConflictRetryTests(unittest.TestCase):

    layer = BEAKER_SESSIONS_FUNCTIONAL_TESTING

    def test_conflict_at_commit_leaves_no_trace_of_the_attempt(self):
        from ZPublisher.HTTPRequest import HTTPRequest

        # What zope.conf's max-conflict-retries sets at start-up.
        self.addCleanup(setattr, HTTPRequest, 'retry_max_count',
                        HTTPRequest.retry_max_count)
        HTTPRequest.retry_max_count = 3
        app = self.layer['app']
        ConflictingCommit.attempts = []
        app._setObject('conflicting', ConflictingCommit())
        transaction.commit()
        client = browser()
        response = client.get('/conflicting')
        self.assertEqual(response.text, 'n=1')
        # The retry started from the stored state: nothing of attempt 1.
        self.assertEqual(ConflictingCommit.attempts, [None, None])
        response = client.get('/conflicting')
        self.assertEqual(response.text, 'n=2')
        self.assertEqual(ConflictingCommit.attempts, [None, None, 1])
        session_id = client.cookies['beaker.session.id'][-32:]
        record = config.get_configuration().store.load(session_id)
        self.assertEqual(sorted(key for key in record if key[0] != '_'),
                         ['attempt-2', 'attempt-3', 'n'])
        transaction.begin()
        self.assertEqual(app.conflicting.hits, 1002)
