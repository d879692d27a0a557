"""Zope instances behind a load balancer without sticky sessions.

Three runwsgi instances, each with its own ZODB, share one store, and each
browser's requests go to them in turn (round robin), as a balancer that
does not stick sends them: concurrent tabs, a new id and an invalidation
on one instance seen by the next, the expiry cleanup while they serve, and
a restart of one instance after the other.
"""
import http.client
import os
import shutil
import subprocess
import threading
import time

import pytest

from Products.BeakerSessionDataManager.tests import stores
from Products.BeakerSessionDataManager.tests.instance import \
    BEAKER_SESSION_DATA_MANAGER
from Products.BeakerSessionDataManager.tests.instance import BIN
from Products.BeakerSessionDataManager.tests.instance import COUNTER_SCRIPT
from Products.BeakerSessionDataManager.tests.instance import WRITE_SCRIPT
from Products.BeakerSessionDataManager.tests.instance import ZopeInstance
from Products.BeakerSessionDataManager.tests.instance import python_script


SHARED = ['file', 'dbm', 'redis', 'rediscluster', 'memcached', 'postgresql']
COOKIE = 'beaker.session.id'
SCRIPTS = (
    BEAKER_SESSION_DATA_MANAGER,
    COUNTER_SCRIPT,
    WRITE_SCRIPT,
    python_script('show', '''\
        manager = container.session_data_manager
        if not manager.hasSessionData():
            return 'none'
        session = container.REQUEST.SESSION
        keys = session.keys()
        keys.sort()
        return session.getContainerKey() + ' ' + ' '.join(keys)
        '''),
    python_script('regenerate', '''\
        return container.session_data_manager.regenerateSessionId()'''),
    # Loads the session, works for a while (``n`` rounds), then writes.
    python_script('slow', '''\
        session = container.REQUEST.SESSION
        session.get('count')
        for i in range(int(n)):
            pass
        session['late'] = n
        return 'slow'
        ''', params='n'),
    python_script('invalidate', '''\
        container.REQUEST.SESSION.invalidate()
        return 'invalidated'
        '''),
)


@pytest.fixture
def store(request):
    settings, cleanup = stores.make_store(request.param)
    yield settings
    cleanup()


def serving(count, settings):
    """``count`` instances of ``settings``, set up and started."""
    zopes = [ZopeInstance(settings) for _ in range(count)]
    try:
        zopes[0].setup(*SCRIPTS)
        for zope in zopes[1:]:
            shutil.copyfile(zopes[0].var('Data.fs'), zope.var('Data.fs'))
        threads = [threading.Thread(target=zope.start) for zope in zopes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for zope in zopes:
            assert zope.process is not None, zope.log()
    except BaseException:
        for zope in zopes:
            zope.cleanup()
        raise
    return zopes


class Browser:
    """A browser behind a balancer that sends each request to the next
    instance, and skips one that refuses connections (being restarted)."""

    def __init__(self, zopes, first=0, cookie=None):
        self.zopes = zopes
        self.next = first
        self.cookie = cookie

    def get(self, path, zope=None):
        """``(status, body, new cookie or None)``; keeps the cookie."""
        for _ in range(100):
            if zope is None:
                target = self.zopes[self.next % len(self.zopes)]
                self.next += 1
            else:
                target = zope
            connection = http.client.HTTPConnection(
                '127.0.0.1', target.port, timeout=60)
            try:
                connection.request('GET', path, headers={
                    'Cookie': '%s=%s' % (COOKIE, self.cookie)
                } if self.cookie else {})
                response = connection.getresponse()
                body = response.read().decode('utf-8', 'replace')
            except (ConnectionRefusedError, ConnectionResetError,
                    http.client.RemoteDisconnected):
                # Stopped, or stopping; a balancer retries elsewhere.
                time.sleep(0.05)
                continue
            finally:
                connection.close()
            new = None
            for header in response.msg.get_all('Set-Cookie') or ():
                name, _, value = header.split(';')[0].partition('=')
                if name == COOKIE:
                    new = self.cookie = value or None
            return response.status, body, new
        raise AssertionError('no instance answers')

    def show(self, zope=None):
        status, body, _ = self.get('/show', zope)
        assert status == 200, body
        return body


@pytest.mark.parametrize('store', SHARED, indirect=True)
def test_round_robin_tabs_new_ids_and_invalidation(store):
    zopes = serving(3, store)
    try:
        browser = Browser(zopes)
        assert browser.get('/count')[:2] == (200, '1')
        # Two tabs, each going round the instances from another one.
        acknowledged, failures = [], []

        def tab(number):
            tab = Browser(zopes, number, browser.cookie)
            for request in range(20):
                key = 'tab%d-%02d' % (number, request)
                status, body, new = tab.get('/write?key=' + key)
                if (status, body, new) == (200, 'ok', None):
                    acknowledged.append(key)
                else:
                    failures.append((key, status, new, body[:300]))

        tabs = [threading.Thread(target=tab, args=(n,)) for n in (0, 1)]
        for thread in tabs:
            thread.start()
        for thread in tabs:
            thread.join(120)
        assert failures == [] and len(acknowledged) == 40
        session_id = browser.cookie[-32:]
        for zope in zopes:
            assert browser.show(zope) == ' '.join(
                [session_id, 'count'] + sorted(acknowledged))

        # A new id (a login) on the first instance, the next request on
        # the second: the data goes with the new id, the old id is dead.
        old_cookie = browser.cookie
        status, new_id, new_cookie = browser.get('/regenerate', zopes[0])
        assert (status, new_cookie[-32:]) == (200, new_id)
        assert browser.show(zopes[1]).startswith(new_id + ' count tab')
        for zope in zopes:
            stale = Browser(zopes, cookie=old_cookie)
            assert stale.show(zope) == 'none'

        # Invalidated on the second instance, gone on the third, which
        # starts a new session under a new id.
        assert browser.get('/invalidate', zopes[1])[:2] == (
            200, 'invalidated')
        assert browser.show(zopes[2]) == 'none'
        status, body, new_cookie = browser.get('/count', zopes[2])
        assert (status, body) == (200, '1')
        assert new_cookie[-32:] not in (session_id, new_id)
        for zope in zopes:
            assert 'Traceback' not in zope.log('event.log')
    finally:
        for zope in zopes:
            zope.cleanup()


@pytest.mark.parametrize('store', ['file', 'redis'], indirect=True)
@pytest.mark.parametrize('action', ['regenerate', 'invalidate'])
def test_an_id_ended_on_one_instance_stays_dead(store, action):
    # A request of the browser that loaded the session on the second
    # instance commits after a login (a new id) or a logout (invalidate)
    # on the first: the old id, which an attacker may have planted, must
    # not come back with what that request wrote.
    zopes = serving(2, store)
    try:
        browser = Browser(zopes)
        assert browser.get('/count', zopes[0])[:2] == (200, '1')
        old_cookie = browser.cookie
        started = time.monotonic()
        assert browser.get('/slow?n=1000000', zopes[1])[:2] == (200, 'slow')
        rounds = int(1000000 * 2 / max(time.monotonic() - started, 0.01))
        finished = []

        def slow():
            tab = Browser(zopes, cookie=old_cookie)
            finished.append(tab.get('/slow?n=%d' % rounds, zopes[1]))
            finished.append(time.monotonic())

        tab = threading.Thread(target=slow)
        tab.start()
        time.sleep(0.5)  # The tab has loaded the session.
        assert browser.get('/' + action, zopes[0])[0] == 200
        ended = time.monotonic()
        tab.join(60)
        assert finished[0][:2] == (200, 'slow')
        assert finished[1] > ended, 'the slow request was not slow enough'
        for zope in zopes:
            assert Browser(zopes, cookie=old_cookie).show(zope) == 'none'
        if action == 'regenerate':
            assert browser.show(zopes[1]).startswith(
                browser.cookie[-32:] + ' count')
    finally:
        for zope in zopes:
            zope.cleanup()


def cleanup_command(settings):
    command = [os.path.join(BIN, 'beaker-sessions'), 'cleanup',
               '--grace', '0']
    for name, value in settings.items():
        command += ['-o', '%s=%s' % (name, value)]
    return command


@pytest.mark.parametrize('store', ['file', 'postgresql'], indirect=True)
def test_cleanup_while_instances_serve(store):
    # Sessions end 3 s after their last use; browsers using theirs every
    # half second through two instances keep them through every cleanup.
    settings = dict(store, **{'session.timeout': '3'})
    zopes = serving(2, settings)
    try:
        for _ in range(3):
            Browser(zopes).get('/count')
        time.sleep(4)  # Those three expire.
        browsers = [Browser(zopes, n) for n in range(4)]
        for browser in browsers:
            assert browser.get('/count')[:2] == (200, '1')
        done = threading.Event()
        problems = []

        def browse(browser):
            count = 1
            while not done.is_set():
                time.sleep(0.5)
                status, body, new = browser.get('/count')
                count += 1
                if (status, body, new) != (200, str(count), None):
                    problems.append((status, body[:300], new))

        threads = [threading.Thread(target=browse, args=(browser,))
                   for browser in browsers]
        for thread in threads:
            thread.start()
        try:
            outputs = [subprocess.run(
                cleanup_command(settings), capture_output=True, text=True,
                timeout=120) for _ in range(3)]
        finally:
            done.set()
            for thread in threads:
                thread.join(60)
        assert problems == []
        assert [output.returncode for output in outputs] == [0] * 3, outputs
        assert 'Removed 3 expired sessions' in outputs[0].stdout
        for browser in browsers:
            assert browser.show().startswith(browser.cookie[-32:])
    finally:
        for zope in zopes:
            zope.cleanup()


@pytest.mark.parametrize('store', ['redis'], indirect=True)
def test_a_rolling_restart_keeps_the_sessions(store):
    # Each instance in turn is stopped and started with a new version of
    # the configuration; the browsers' requests go to the others meanwhile.
    zopes = serving(2, store)
    try:
        browsers = [Browser(zopes, n) for n in range(4)]
        for browser in browsers:
            assert browser.get('/count')[:2] == (200, '1')
        done = threading.Event()
        problems = []
        counts = {}

        def browse(browser):
            count = 1
            while not done.is_set():
                status, body, new = browser.get('/count')
                # A request cut short by a stop was counted if the
                # instance had committed it: sent again, it counts twice.
                if status != 200 or new is not None \
                        or body not in (str(count + 1), str(count + 2)):
                    problems.append((status, body[:300], new))
                    break
                count = int(body)
                time.sleep(0.1)
            counts[browser] = count

        threads = [threading.Thread(target=browse, args=(browser,))
                   for browser in browsers]
        for thread in threads:
            thread.start()
        try:
            for zope in zopes:
                zope.stop()
                zope.configure(dict(store, **{
                    'session.write_granularity': '10'}))
                time.sleep(0.5)
                zope.start()
                time.sleep(1)
        finally:
            done.set()
            for thread in threads:
                thread.join(60)
        assert problems == []
        assert min(counts.values()) > 5
    finally:
        for zope in zopes:
            zope.cleanup()
