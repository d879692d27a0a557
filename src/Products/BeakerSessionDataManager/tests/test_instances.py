"""Several Zope instances on one store, and restarts: runwsgi processes.

Two instances with the same store and secret serve one visitor in turn;
an instance with another secret, serializer or key does not accept that
visitor's session, and says so in its log; sessions outlive a restart on
every store that keeps them outside Zope.  (test_balancer.py: more
instances, browsers going round them.)
"""
import re
import shutil
import threading
import time

import pytest

from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests import stores
from Products.BeakerSessionDataManager.tests.instance import \
    BEAKER_SESSION_DATA_MANAGER
from Products.BeakerSessionDataManager.tests.instance import COUNTER_SCRIPT
from Products.BeakerSessionDataManager.tests.instance import ZopeInstance
from Products.BeakerSessionDataManager.tests.instance import new_secret
from Products.BeakerSessionDataManager.tests.instance import python_script


UNTOUCHED_SCRIPT = python_script('untouched', "return 'no session here'")
READ_SCRIPT = python_script(
    'read', "return container.REQUEST.SESSION.get('count')")


@pytest.fixture
def store(request):
    """The settings of a new store named by the test's parameter."""
    settings, cleanup = stores.make_store(request.param)
    yield settings
    cleanup()


def started(first, *others):
    """Set the first instance up, give the others a copy of its database
    (zconsole takes seconds), and start them all at once."""
    first.setup(BEAKER_SESSION_DATA_MANAGER, COUNTER_SCRIPT, UNTOUCHED_SCRIPT,
                READ_SCRIPT)
    for zope in others:
        shutil.copyfile(first.var('Data.fs'), zope.var('Data.fs'))
    errors = []

    def start(zope):
        try:
            zope.start()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(zope,))
               for zope in (first,) + others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def digest(zope):
    """The shared settings digest in ``zope``'s start-up line."""
    return re.search(r'shared settings digest ([0-9a-f]+)',
                     zope.log('event.log')).group(1)


def count(zope, cookie=None):
    """GET /count: ``(body, cookie sent back or None)``."""
    status, set_cookie, body = zope.get('/count', cookie)
    assert status == 200, body
    return body, set_cookie and set_cookie.split(';')[0]


@pytest.mark.parametrize(
    'store', ['file', 'redis', 'rediscluster', 'memcached', 'postgresql'],
    indirect=True)
def test_two_instances_share_sessions_that_survive_restarts(store):
    with ZopeInstance(store) as first, ZopeInstance(store) as second:
        started(first, second)
        body, cookie = count(first)
        assert (body, cookie is not None) == ('1', True)
        assert count(second, cookie) == ('2', None)
        assert count(first, cookie) == ('3', None)
        assert digest(first) == digest(second)
        second.restart()
        assert count(second, cookie) == ('4', None)
        assert count(first, cookie) == ('5', None)


@pytest.mark.parametrize('store', ['redis'], indirect=True)
def test_a_write_through_one_instance_is_read_at_once_by_the_other(store):
    # The reader keeps the session in its client cache; the writer's
    # change must reach it before the visitor's next request does.
    with ZopeInstance(store) as writer, ZopeInstance(store) as reader:
        started(writer, reader)
        _, cookie = count(writer)
        for expected in range(2, 42):
            assert reader.get('/read', cookie)[2] == str(expected - 1)
            assert count(writer, cookie) == (str(expected), None)
            assert reader.get('/read', cookie)[2] == str(expected)


@pytest.mark.parametrize('store', ['file', 'redis'], indirect=True)
def test_a_session_only_read_outlives_a_timeout_shorter_than_30_s(store):
    # Reads record the access once per write granularity (30 s by
    # default): were it not shorter than the timeout, the session would
    # end while a visitor reads it through one instance after the other.
    settings = dict(store, **{'session.timeout': '3'})
    with ZopeInstance(settings) as first, ZopeInstance(settings) as second:
        started(first, second)
        _, cookie = count(first)
        for zope in (second, first) * 3:
            time.sleep(1)
            assert zope.get('/read', cookie)[::2] == (200, '1')
        # Unused for longer than the timeout: ended on both.
        time.sleep(4)
        status, new_cookie, _ = second.get('/read', cookie)
        assert status == 204  # None, in a new session
        assert new_cookie.split(';')[0] != cookie
        assert count(first, cookie)[0] == '1'


@pytest.mark.parametrize(
    'store', ['dbm', 'sqlite'], indirect=True)
def test_sessions_survive_a_restart(store):
    with ZopeInstance(store) as zope:
        started(zope)
        body, cookie = count(zope)
        assert body == '1'
        zope.restart()
        assert count(zope, cookie) == ('2', None)


def cookie_store():
    return {'session.type': 'cookie', 'session.validate_key': new_secret(),
            'session.encrypt_key': new_secret()}, lambda: None


# store, the options of the second instance, the option its log names
MISMATCHES = {
    'secret': ('file', {'session.secret': new_secret()}, 'session.secret'),
    'serializer': ('redis', {'session.data_serializer': 'json'},
                   'session.data_serializer'),
    'encryption': ('postgresql', {'session.encrypt_key': new_secret(),
                                  'session.validate_key': new_secret()},
                   'session.encrypt_key'),
    'cookie-validate-key': ('cookie', {'session.validate_key': new_secret()},
                            'session.validate_key'),
    'cookie-encrypt-key': ('cookie', {'session.encrypt_key': new_secret()},
                           'session.encrypt_key'),
}


@pytest.mark.parametrize('mismatch', sorted(MISMATCHES))
def test_instances_sharing_a_store_with_other_settings(mismatch):
    # A visitor going from one instance to the other gets a new session,
    # and each instance's log says why, once, naming the option.
    store, options, named = MISMATCHES[mismatch]
    settings, cleanup = (cookie_store() if store == 'cookie'
                         else stores.make_store(store))
    other = dict(settings, **options)
    try:
        with ZopeInstance(settings) as first, \
                ZopeInstance(other) as second:
            started(first, second)
            body, cookie = count(first)
            for zope in (second, first, second, first):
                body, new_cookie = count(zope, cookie)
                assert body == '1'
                assert new_cookie is not None and new_cookie != cookie
                cookie = new_cookie
            # The first instance's visitors keep their sessions.
            body, cookie = count(first)
            assert count(first, cookie)[0] == '2'
            for zope in (first, second):
                log = zope.log('event.log')
                # Ours only: on a loaded machine waitress warns of its
                # queue ("Task queue depth is 1").
                warnings = [line for line in log.splitlines() if re.search(
                    r'WARNING \[Products\.BeakerSessionDataManager', line)]
                assert len(warnings) == 1 + (
                    'collective.beaker' in log), warnings
                assert named in log, log
                assert 'Traceback' not in log, log
            # What the administrator compares finds the difference.
            assert digest(first) != digest(second)
    finally:
        cleanup()


def test_a_memcached_pool_listed_in_another_order():
    # python-memcached places a key by the server's position: the second
    # instance looks for the sessions on the other server.  No error can
    # tell; the digests that the administrator compares do.
    settings = stores.make_store('memcached_pool')[0]
    pool = settings['session.url'].split(';')
    other = dict(settings, **{'session.url': ';'.join(pool[::-1])})
    with ZopeInstance(settings) as first, ZopeInstance(other) as second:
        started(first, second)
        _, cookie = count(first)
        assert count(second, cookie)[0] == '1'
        assert digest(first) != digest(second)


# Puts the clock of the process it is loaded in a minute ahead.
CLOCK_AHEAD = """
import time
_time = time.time
time.time = lambda: _time() + 60
"""


@pytest.mark.parametrize('store', ['redis'], indirect=True)
def test_an_instance_whose_clock_is_ahead(store, tmp_path, monkeypatch):
    # Beyond the timeout, each instance takes the other's sessions for
    # expired; the one whose clock is behind says why.
    (tmp_path / 'sitecustomize.py').write_text(CLOCK_AHEAD)
    settings = dict(store, **{'session.timeout': '10'})
    with ZopeInstance(settings) as behind, ZopeInstance(settings) as ahead:
        behind.setup(BEAKER_SESSION_DATA_MANAGER, COUNTER_SCRIPT)
        shutil.copyfile(behind.var('Data.fs'), ahead.var('Data.fs'))
        behind.start()
        monkeypatch.setenv('PYTHONPATH', str(tmp_path))
        ahead.start()
        monkeypatch.undo()
        _, cookie = count(ahead)
        body, new_cookie = count(behind, cookie)
        assert (body, new_cookie is None) == ('2', True)
        assert count(ahead, cookie)[0] == '1'  # Expired by its clock.
        assert 'ahead of this instance\'s clock' in behind.log('event.log')


def test_unreachable_store_warns_at_start_up_and_gives_503():
    url = 'redis://127.0.0.1:%d/0' % servers.free_port()
    settings = {'session.type': 'ext:redis', 'session.url': url,
                'session.secret': new_secret()}
    with ZopeInstance(settings) as zope:
        started(zope)
        log = zope.log('event.log')
        assert 'WARNING' in log and '%s (session.url)' % url in log, log
        status, _, body = zope.get('/count')
        assert status == 503, body
        assert 'Traceback' not in body
        assert zope.get('/untouched')[::2] == (200, 'no session here')
