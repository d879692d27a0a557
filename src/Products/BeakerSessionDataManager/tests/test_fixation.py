"""Fixation defence through the publisher: new ids at login, old ids dead.

The Plone suite (tests/plone) proves the same through Plone's login form
and PAS's logged-in event.
"""
import os
import secrets
import sys
import types
import unittest
from unittest import mock

import webtest
from beaker.container import FileNamespaceManager
from beaker.middleware import SessionMiddleware

import transaction
from OFS.SimpleItem import SimpleItem
from plone.testing import zca
from zope.component import getGlobalSiteManager
from zope.configuration import xmlconfig
from zope.interface import Interface

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager import regenerate_session
from Products.BeakerSessionDataManager import testing
from Products.BeakerSessionDataManager.fixation import user_logged_in
from Products.BeakerSessionDataManager.testing import \
    BEAKER_SESSIONS_FUNCTIONAL_TESTING
from Products.BeakerSessionDataManager.testing import ZopeWSGIApp
from Products.BeakerSessionDataManager.testing import \
    addStockSessionDataManager
from Products.BeakerSessionDataManager.testing import browser
from Products.BeakerSessionDataManager.testing import replaceSessionDataManager
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests import stores
from Products.BeakerSessionDataManager.tests.test_manager import COUNTER
from Products.BeakerSessionDataManager.tests.test_manager import add_script
from Products.BeakerSessionDataManager.tests.test_manager import session_files


COOKIE = 'beaker.session.id'
LOGIN = 'return context.session_data_manager.regenerateSessionId()'


class LoginPage(SimpleItem):
    """A site's own login page, outside PAS: it calls the helper."""

    def __call__(self, REQUEST):
        """Publishable."""
        return repr(regenerate_session(REQUEST))


class UndoneLogin(SimpleItem):
    """A login form whose work after the login is undone: a savepoint
    taken before it rolled back (a failed step of an add-on), or the
    transaction doomed or aborted, and begun again.  The response still
    goes out (with the login's own cookie): the session must be all
    renamed or not at all."""

    def __call__(self, REQUEST, undo, before=False):
        """Publishable."""
        session = REQUEST.SESSION
        if before:
            # The session's writer joins before the savepoint.
            session['before'] = 1
        savepoint = transaction.savepoint()
        new = regenerate_session(REQUEST)
        session['after'] = 1
        if undo == 'savepoint':
            savepoint.rollback()
        elif undo == 'doom':
            transaction.doom()
        elif undo == 'abort':
            transaction.abort()
            REQUEST.SESSION['late'] = 1
        return repr(new)


class UndoneLoginScenarios:
    """What the browser's session holds after a login whose work was
    undone, with stock sessions (the oracle: they keep their id at login)
    and with ours; ``renamed`` and ``not_renamed`` check our id and store
    on top."""

    def setUp(self):
        self.app = self.layer['app']
        add_script(self.app, 'counter', COUNTER)
        add_script(self.app, 'user_keys', """\
keys = context.REQUEST.SESSION.keys()
keys.sort()
return repr(keys)
""")
        self.app._setObject('undone_login', UndoneLogin())
        transaction.commit()
        self.browser = browser()

    def login(self, undo, before=False):
        """Start a session, log in with ``undo``; return (the keys of the
        session afterwards, what the old cookie finds, old id, new id)."""
        self.browser.get('/counter')
        self.browser.get('/counter')
        cookie = self.browser.cookies[self.cookie_name]
        response = self.browser.get('/undone_login', params={
            'undo': undo, 'before:int': int(before)})
        new = eval(response.text)
        keys = self.browser.get('/user_keys').text
        planted = browser()
        planted.set_cookie(self.cookie_name, cookie)
        return keys, planted.get('/user_keys').text, cookie[-32:], new

    def test_savepoint_rolled_back_across_the_login(self):
        keys, planted, old, new = self.login('savepoint')
        self.assertEqual(keys, "['n']")
        self.renamed(planted, old, new)

    def test_savepoint_rolled_back_across_the_login_after_a_write(self):
        keys, planted, old, new = self.login('savepoint', before=True)
        self.assertEqual(keys, "['before', 'n']")
        self.renamed(planted, old, new)

    def test_doomed_login(self):
        keys, planted, old, new = self.login('doom')
        self.assertEqual(keys, "['n']")
        self.not_renamed(planted, old, new)

    def test_aborted_login_then_a_new_transaction(self):
        keys, planted, old, new = self.login('abort')
        self.assertEqual(keys, "['late', 'n']")
        self.not_renamed(planted, old, new)


class StockUndoneLoginTests(UndoneLoginScenarios, unittest.TestCase):

    layer = testing.STOCK_SESSIONS_FUNCTIONAL_TESTING
    cookie_name = '_ZopeId'

    def renamed(self, planted, old, new):
        self.assertIsNone(new)  # Stock sessions keep their id.

    not_renamed = renamed


class UndoneLoginTests(UndoneLoginScenarios, unittest.TestCase):

    layer = BEAKER_SESSIONS_FUNCTIONAL_TESTING
    cookie_name = COOKIE

    def renamed(self, planted, old, new):
        """The rename stands, with the session as the savepoint had it:
        the browser has the new id, the old one is dead."""
        store = config.get_configuration().store
        self.assertEqual(self.browser.cookies[COOKIE][-32:], new)
        self.assertIsNone(store.load(old))
        self.assertIsNotNone(store.load(new))
        self.assertEqual(planted, '[]')

    def not_renamed(self, planted, old, new):
        """Nothing of the rename: the browser keeps its id and session,
        and the new id was never stored."""
        store = config.get_configuration().store
        self.assertEqual(self.browser.cookies[COOKIE][-32:], old)
        self.assertIsNotNone(store.load(old))
        self.assertIsNone(store.load(new))
        self.assertNotEqual(planted, '[]')


class FixationTests(unittest.TestCase):

    layer = BEAKER_SESSIONS_FUNCTIONAL_TESTING

    def setUp(self):
        self.app = self.layer['app']
        add_script(self.app, 'counter', COUNTER)
        add_script(self.app, 'login', LOGIN)
        add_script(self.app, 'bid', 'return context.session_data_manager'
                                    '.getBrowserIdManager().getBrowserId()')
        add_script(self.app, 'has', 'return context.session_data_manager'
                                    '.hasSessionData() and "yes" or "no"')
        self.app._setObject('own_login', LoginPage())
        transaction.commit()
        self.browser = browser()
        self.store = config.get_configuration().store

    def session_id(self):
        return self.browser.cookies[COOKIE][-32:]

    def sent_ids(self, response):
        return [value.split(';')[0].split('=', 1)[1][-32:]
                for value in response.headers.getall('Set-Cookie')
                if value.startswith(COOKIE + '=')]

    def start_session(self, n=2):
        for _ in range(n):
            self.browser.get('/counter')
        return self.session_id()

    def test_new_id_keeps_data_and_old_id_is_dead(self):
        old = self.start_session()
        before = self.browser.cookies[COOKIE]
        response = self.browser.get('/login')
        new = response.text
        self.assertNotEqual(new, old)
        self.assertEqual(self.sent_ids(response), [new])
        self.assertIsNone(self.store.load(old))
        self.assertIsNotNone(self.store.load(new))
        self.assertEqual(self.browser.get('/counter').text, '3')
        # Whoever still holds the old cookie gets a fresh, empty session
        # under an id the server makes, not the data.
        attacker = browser()
        attacker.set_cookie(COOKIE, before)
        response = attacker.get('/counter')
        self.assertEqual(response.text, '1')
        self.assertNotIn(old, self.sent_ids(response))
        self.assertEqual(self.browser.get('/counter').text, '4')

    def test_creation_time_is_kept(self):
        add_script(self.app, 'created', 'return repr(context.REQUEST'
                                        '.SESSION.getCreated())')
        transaction.commit()
        self.start_session(1)
        before = self.browser.get('/created').text
        self.browser.get('/login')
        self.assertEqual(self.browser.get('/created').text, before)

    def test_no_session_none_is_created(self):
        before = session_files(self.layer)
        response = self.browser.get('/login')
        self.assertEqual(response.text, '')
        self.assertEqual(self.sent_ids(response), [])
        self.assertEqual(session_files(self.layer), before)

    def test_browser_id_without_data_gets_a_new_id(self):
        old = self.browser.get('/bid').text
        self.assertIsNotNone(self.store.load(old))
        new = self.browser.get('/login').text
        self.assertNotEqual(new, old)
        self.assertIsNone(self.store.load(old))
        self.assertEqual(self.browser.get('/bid').text, new)
        # Still only a browser id: no session data was created.
        self.assertEqual(self.browser.get('/has').text, 'no')

    def test_session_started_in_the_login_request_keeps_its_id(self):
        add_script(self.app, 'start_and_login', """\
context.REQUEST.SESSION['cart'] = ['book']
first = context.session_data_manager.regenerateSessionId()
again = context.session_data_manager.regenerateSessionId()
return first == again == context.REQUEST.SESSION.getContainerKey()
""")
        transaction.commit()
        response = self.browser.get('/start_and_login')
        self.assertEqual(response.text, 'True')
        self.assertEqual(len(self.sent_ids(response)), 1)

    def test_twice_in_one_request_deletes_the_old_record(self):
        add_script(self.app, 'login_twice', """\
sdm = context.session_data_manager
first = sdm.regenerateSessionId()
return first == sdm.regenerateSessionId()
""")
        transaction.commit()
        old = self.start_session()
        response = self.browser.get('/login_twice')
        self.assertEqual(response.text, 'True')
        self.assertIsNone(self.store.load(old))
        self.assertEqual(self.browser.get('/counter').text, '3')

    def test_session_held_across_the_login_keeps_its_writes(self):
        # Code after the login (an IUserLoggedInEvent subscriber, the rest
        # of a login form) writes to request.SESSION, or to the session it
        # took before: with stock sessions, which keep their id at login,
        # those writes are kept, and so they are here.
        add_script(self.app, 'login_and_write', """\
session = context.REQUEST.SESSION
session['before'] = 1
new = context.session_data_manager.regenerateSessionId()
session['held'] = 2
context.REQUEST.SESSION['request'] = 3
return new == context.REQUEST.SESSION.getContainerKey()
""")
        add_script(self.app, 'sorted_keys', """\
keys = context.REQUEST.SESSION.keys()
keys.sort()
return repr(keys)
""")
        transaction.commit()
        old = self.start_session()
        self.assertEqual(self.browser.get('/login_and_write').text, 'True')
        self.assertNotEqual(self.session_id(), old)
        self.assertIsNone(self.store.load(old))
        self.assertEqual(self.browser.get('/sorted_keys').text,
                         "['before', 'held', 'n', 'request']")

    def test_failed_login_keeps_the_old_id(self):
        add_script(self.app, 'failed_login', LOGIN.replace('return ', '')
                   + '\nraise ValueError')
        transaction.commit()
        old = self.start_session()
        self.browser.get('/failed_login', status=500)
        self.assertIsNotNone(self.store.load(old))
        self.assertEqual(self.session_id(), old)
        self.assertEqual(self.browser.get('/counter').text, '3')

    def test_invalidate_deletes_the_record(self):
        add_script(self.app, 'logout', 'context.REQUEST.SESSION.invalidate()')
        transaction.commit()
        old = self.start_session()
        self.browser.get('/logout')
        self.assertIsNone(self.store.load(old))
        response = self.browser.get('/counter')
        self.assertEqual(response.text, '1')
        self.assertNotIn(old, self.sent_ids(response))

    def test_helper_for_sites_that_log_in_differently(self):
        old = self.start_session()
        new = self.browser.get('/own_login').text.strip("'")
        self.assertNotEqual(new, old)
        self.assertEqual(self.session_id(), new)
        self.assertIsNone(self.store.load(old))
        self.assertEqual(self.browser.get('/counter').text, '3')
        self.assertEqual(browser().get('/own_login').text, 'None')

    def test_helper_leaves_stock_sessions_alone(self):
        replaceSessionDataManager(self.app, addStockSessionDataManager)
        transaction.commit()
        self.browser.get('/counter')
        self.browser.get('/counter')
        self.assertEqual(self.browser.get('/own_login').text, 'None')
        self.assertEqual(self.browser.get('/counter').text, '3')


class LoggedIn:
    """What PAS notifies (PAS is not installed here; Plone's suite fires
    the real event)."""

    principal = None


class PASLoginPage(SimpleItem):
    """Where PAS would notify its logged-in event."""

    def __call__(self):
        """Publishable."""
        user_logged_in(LoggedIn())
        return 'logged in'


class LoginDuringOutageTests(unittest.TestCase):
    """A login does not need the session: it works while the store is
    down, and the browser drops the session id it had."""

    layer = BEAKER_SESSIONS_FUNCTIONAL_TESTING

    def setUp(self):
        self.server = servers.RedisServer()
        self.server.start()
        self.addCleanup(self.server.cleanup)
        self.addCleanup(setattr, config, '_current', config._current)
        config.configure({'session.type': 'ext:redis',
                          'session.url': self.server.url,
                          'session.secret': secrets.token_urlsafe(36)})
        app = self.layer['app']
        add_script(app, 'counter', COUNTER)
        add_script(app, 'login', LOGIN)
        app._setObject('pas_login', PASLoginPage())
        transaction.commit()

    def test_login_drops_the_cookie_while_the_store_is_down(self):
        client, caller = browser(), browser()
        for each in (client, caller):
            each.get('/counter')
        old = client.cookies[COOKIE][-32:]
        self.server.kill()
        self.assertEqual(client.get('/pas_login').text, 'logged in')
        self.assertNotIn(COOKIE, client.cookies)
        # The API answers 503, as any request that needs the session.
        caller.get('/login', status=503)
        self.server.start()
        self.assertEqual(client.get('/counter').text, '1')
        self.assertNotEqual(client.cookies[COOKIE][-32:], old)


class EveryStore:
    """The old record is deleted from each store, by login and logout."""

    def test_old_records_are_deleted(self):
        app = self.layer['app']
        add_script(app, 'counter', COUNTER)
        add_script(app, 'login', LOGIN)
        add_script(app, 'logout', 'context.REQUEST.SESSION.invalidate()')
        transaction.commit()
        store = self.layer['beaker_configuration'].store
        client = browser()
        client.get('/counter')
        old = client.cookies[COOKIE][-32:]
        new = client.get('/login').text
        self.assertIsNone(store.load(old))
        self.assertEqual(client.get('/counter').text, '2')
        self.assertEqual(store.load(new)['n'], 2)
        client.get('/logout')
        self.assertIsNone(store.load(new))

    def test_a_savepoint_rolled_back_keeps_the_login(self):
        app = self.layer['app']
        add_script(app, 'counter', COUNTER)
        app._setObject('undone_login', UndoneLogin())
        transaction.commit()
        store = self.layer['beaker_configuration'].store
        client = browser()
        client.get('/counter')
        old = client.cookies[COOKIE][-32:]
        new = eval(client.get('/undone_login', params={
            'undo': 'savepoint', 'before:int': 1}).text)
        self.assertEqual(client.cookies[COOKIE][-32:], new)
        self.assertIsNone(store.load(old))
        self.assertEqual(client.get('/counter').text, '2')
        self.assertEqual(store.load(new)['before'], 1)


for _name in stores.STORES:
    globals()['TestStore_%s' % _name] = type(
        'TestStore_%s' % _name, (EveryStore, unittest.TestCase),
        {'layer': stores.LAYERS[_name]})
del _name


class MiddlewareFixationTests(unittest.TestCase):
    """Under Beaker's SessionMiddleware the middleware owns the id."""

    layer = BEAKER_SESSIONS_FUNCTIONAL_TESTING

    def setUp(self):
        app = self.layer['app']
        add_script(app, 'counter', COUNTER)
        add_script(app, 'login', LOGIN)
        transaction.commit()
        saved = config._current
        config.reset()
        self.addCleanup(setattr, config, '_current', saved)
        self.directory = os.path.join(self.layer['beaker_dir'], 'mw-login')
        pipeline = SessionMiddleware(ZopeWSGIApp(), {
            'session.type': 'file',
            'session.data_dir': self.directory,
            'session.key': 'mw_session',
            'session.secret': 'a middleware secret of enough length',
        })
        self.browser = webtest.TestApp(
            pipeline, extra_environ={'HTTP_HOST': 'nohost'})

    def stored(self, session_id):
        namespace = FileNamespaceManager(
            session_id, data_dir=self.directory, digest_filenames=False)
        namespace.acquire_read_lock()
        try:
            return 'session' in namespace
        finally:
            namespace.release_read_lock()

    def test_new_id_keeps_data_and_old_record_is_deleted(self):
        self.browser.get('/counter')
        self.browser.get('/counter')
        old = self.browser.cookies['mw_session'][-32:]
        self.assertTrue(self.stored(old))
        new = self.browser.get('/login').text
        self.assertNotEqual(new, old)
        self.assertEqual(self.browser.cookies['mw_session'][-32:], new)
        self.assertFalse(self.stored(old))
        self.assertEqual(self.browser.get('/counter').text, '3')
        self.assertTrue(self.stored(new))


class TestingFixtureZCMLTests(unittest.TestCase):
    """``testing.FIXTURE`` loads the login subscriber where
    Products.PluggableAuthService is installed (stubbed here: the test
    extra does not install it), as Zope does at start-up."""

    def setUp(self):
        zca.pushGlobalRegistry()
        self.addCleanup(zca.popGlobalRegistry)
        events = types.ModuleType(
            'Products.PluggableAuthService.interfaces.events')
        events.IUserLoggedInEvent = IUserLoggedInEvent
        stubs = {
            'Products.PluggableAuthService': types.ModuleType(
                'Products.PluggableAuthService'),
            'Products.PluggableAuthService.interfaces': types.ModuleType(
                'Products.PluggableAuthService.interfaces'),
            'Products.PluggableAuthService.interfaces.events': events,
        }
        patcher = mock.patch.dict(sys.modules, stubs)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_login_subscriber(self):
        import Products.Five
        fixture = testing.BeakerSessionDataManagerFixture()
        base = fixture['configurationContext'] = \
            zca.stackConfigurationContext(name='Five')
        xmlconfig.file('meta.zcml', Products.Five, context=base)
        fixture.setUpZCML()
        self.addCleanup(zca.popGlobalRegistry)
        handlers = [registration.handler for registration
                    in getGlobalSiteManager().registeredHandlers()
                    if registration.required == (IUserLoggedInEvent,)]
        self.assertEqual(handlers, [user_logged_in])


class IUserLoggedInEvent(Interface):
    """Stands for PAS's."""
