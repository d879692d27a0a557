"""The manager through Zope's WSGI publisher: cookies, ids, errors, ZMI."""
import os
import unittest

import transaction
from OFS.SimpleItem import SimpleItem
from plone.testing import zope
from Products.PythonScripts.PythonScript import manage_addPythonScript
from ZODB.POSException import ConflictError

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager.testing import \
    BEAKER_SESSIONS_FUNCTIONAL_TESTING
from Products.BeakerSessionDataManager.testing import MANAGER_NAME
from Products.BeakerSessionDataManager.testing import MANAGER_PASSWORD
from Products.BeakerSessionDataManager.testing import browser


COOKIE = 'beaker.session.id'
COUNTER = """\
session = context.REQUEST.SESSION
session['n'] = session.get('n', 0) + 1
return session['n']
"""


def add_script(container, id, body, params=''):
    manage_addPythonScript(container, id)
    getattr(container, id).ZPythonScript_edit(params, body)


def session_files(layer):
    data = os.path.join(layer['beaker_dir'], 'data')
    return [name for _, _, names in os.walk(data) for name in names]


class ConflictingPage(SimpleItem):
    """Writes to the session, then fails with a ConflictError once."""

    attempts = []

    def __call__(self, REQUEST):
        """Publishable."""
        session = REQUEST.SESSION
        self.attempts.append(session.get('n'))
        session['n'] = session.get('n', 0) + 1
        session['attempt-%d' % len(self.attempts)] = True
        if len(self.attempts) == 1:
            raise ConflictError('simulated write conflict')
        return 'n=%s' % session['n']


class ManagerTestCase(unittest.TestCase):

    layer = BEAKER_SESSIONS_FUNCTIONAL_TESTING

    def setUp(self):
        self.app = self.layer['app']
        add_script(self.app, 'counter', COUNTER)
        add_script(self.app, 'untouched', "return 'no session here'")
        transaction.commit()
        self.browser = browser()

    def manager(self):
        return self.app.session_data_manager

    def cookie(self, response):
        return [value for value in response.headers.getall('Set-Cookie')
                if value.startswith(COOKIE + '=')]


class CookieTests(ManagerTestCase):

    def test_cookie_is_signed_httponly_samesite(self):
        response = self.browser.get('/counter')
        self.assertEqual(response.text, '1')
        [cookie] = self.cookie(response)
        self.assertIn('HttpOnly', cookie)
        self.assertIn('SameSite=Lax', cookie)
        self.assertIn('Path=/', cookie)
        value = cookie.split(';')[0].split('=', 1)[1]
        self.assertEqual(len(value), 40 + 32)

    def test_cookie_sent_once(self):
        self.browser.get('/counter')
        response = self.browser.get('/counter')
        self.assertEqual(response.text, '2')
        self.assertEqual(self.cookie(response), [])

    def test_untouched_request_costs_nothing(self):
        before = session_files(self.layer)
        response = self.browser.get('/untouched')
        self.assertEqual(self.cookie(response), [])
        self.assertEqual(session_files(self.layer), before)

    def test_garbage_cookies_get_a_fresh_session(self):
        real = self.browser.get('/counter')
        value = self.cookie(real)[0].split(';')[0].split('=', 1)[1]
        forged = value[:40] + 'b' * 32
        unsigned = value[40:]
        for garbage in ('', 'garbage', 'x' * 5000, '\u00e9t\u00e9',
                        forged, unsigned, value[:-1], '"' + 'a' * 80 + '"'):
            other = browser()
            other.set_cookie(COOKIE, garbage)
            response = other.get('/counter')
            self.assertEqual(response.status_int, 200, garbage)
            self.assertEqual(response.text, '1', garbage)
            [cookie] = self.cookie(response)
            self.assertNotIn(garbage or 'nothing', cookie)

    def test_id_unknown_to_the_store_is_replaced(self):
        response = self.browser.get('/counter')
        old = self.cookie(response)[0].split(';')[0]
        manager = self.manager()
        session_id = old.split('=', 1)[1][40:]
        config.get_configuration().store.delete(session_id)
        response = self.browser.get('/counter')
        self.assertEqual(response.text, '1')
        [new] = self.cookie(response)
        self.assertNotEqual(new.split(';')[0], old)
        self.assertIsNotNone(manager)

    def test_expired_session_reads_as_fresh(self):
        response = self.browser.get('/counter')
        session_id = self.cookie(response)[0].split(';')[0][-32:]
        store = config.get_configuration().store

        def age(record):
            record['_accessed_time'] -= 3600
            return record
        store.merge(session_id, age)
        self.assertEqual(self.browser.get('/counter').text, '1')


class ManagerApiTests(ManagerTestCase):

    def test_has_session_data_creates_nothing(self):
        add_script(self.app, 'has', 'return context.session_data_manager'
                                    '.hasSessionData() and "yes" or "no"')
        add_script(self.app, 'peek', 'return context.session_data_manager'
                                     '.getSessionData(create=0)')
        transaction.commit()
        before = session_files(self.layer)
        self.assertEqual(self.browser.get('/has').text, 'no')
        self.assertEqual(self.browser.get('/peek').text, '')
        self.assertEqual(session_files(self.layer), before)
        self.browser.get('/counter')
        self.assertEqual(self.browser.get('/has').text, 'yes')

    def test_browser_id_manager(self):
        add_script(self.app, 'bid', """\
bim = context.session_data_manager.getBrowserIdManager()
sid = bim.getBrowserId()
return '%s %s %s %s %s' % (
    bim.getBrowserIdName(), sid == context.REQUEST.SESSION.getContainerKey(),
    bim.isBrowserIdNew(), bim.isBrowserIdFromCookie(), bim.hasBrowserId())
""")
        add_script(self.app, 'encode', """\
from Products.Sessions.interfaces import BrowserIdManagerErr
bim = context.session_data_manager.getBrowserIdManager()
try:
    bim.encodeUrl('http://example.com/')
except BrowserIdManagerErr:
    return 'refused'
""")
        transaction.commit()
        self.assertEqual(self.browser.get('/bid').text,
                         'beaker.session.id True True None True')
        self.assertEqual(self.browser.get('/bid').text,
                         'beaker.session.id True False 1 True')
        self.assertEqual(self.browser.get('/encode').text, 'refused')

    def test_regenerate_session_id_keeps_data(self):
        self.browser.get('/counter')
        self.browser.get('/counter')
        old_id = self.browser.cookies[COOKIE][-32:]
        add_script(self.app, 'login',
                   'return context.session_data_manager'
                   '.regenerateSessionId()')
        transaction.commit()
        response = self.browser.get('/login')
        new_id = response.text
        self.assertNotEqual(new_id, old_id)
        self.assertEqual(self.cookie(response)[0].split(';')[0][-32:], new_id)
        self.assertEqual(self.browser.get('/counter').text, '3')
        self.assertIsNone(config.get_configuration().store.load(old_id))

    def test_error_response_writes_nothing(self):
        add_script(self.app, 'fails', """\
context.REQUEST.SESSION['n'] = 100
raise ValueError('boom')
""")
        transaction.commit()
        self.browser.get('/counter')
        self.browser.get('/fails', status=500)
        self.assertEqual(self.browser.get('/counter').text, '2')

    def test_conflict_retry_starts_from_stored_state(self):
        from ZPublisher.HTTPRequest import HTTPRequest

        # What zope.conf's max-conflict-retries sets at start-up.
        self.addCleanup(setattr, HTTPRequest, 'retry_max_count',
                        HTTPRequest.retry_max_count)
        HTTPRequest.retry_max_count = 3
        ConflictingPage.attempts = []
        self.app._setObject('conflicting', ConflictingPage())
        transaction.commit()
        self.browser.get('/counter')
        response = self.browser.get('/conflicting')
        self.assertEqual(response.text, 'n=2')
        self.assertEqual(ConflictingPage.attempts, [1, 1])
        add_script(self.app, 'show', 'keys = context.REQUEST.SESSION.keys()'
                                     '\nkeys.sort()\nreturn keys')
        transaction.commit()
        self.assertEqual(self.browser.get('/show').text,
                         "['attempt-2', 'n']")

    def test_unconfigured_manager_is_a_clear_error(self):
        saved = config._current
        config.reset()
        self.addCleanup(setattr, config, '_current', saved)
        self.assertEqual(self.browser.get('/untouched').status_int, 200)
        response = self.browser.get('/counter', status=500)
        self.assertEqual(response.status_int, 500)

    def test_store_outage_is_503_and_site_keeps_serving(self):
        # The store's data directory replaced by a file: nothing can be
        # read or written there.
        self.browser.get('/counter')
        data = os.path.join(self.layer['beaker_dir'], 'data')
        os.rename(data, data + '.away')
        self.addCleanup(os.rename, data + '.away', data)
        with open(data, 'w'):
            pass
        self.addCleanup(os.remove, data)
        self.assertEqual(self.browser.get('/untouched').status_int, 200)
        response = self.browser.get('/counter', status=503)
        self.assertIn('session', response.text.lower())


class LegacyObjectTests(ManagerTestCase):

    def test_manager_pickled_by_2x_keeps_working(self):
        from Products.BeakerSessionDataManager.sessiondata import \
            BeakerSessionDataManager
        self.app._delObject('session_data_manager')
        legacy = BeakerSessionDataManager.__new__(BeakerSessionDataManager)
        legacy.__setstate__({'title': 'old', 'id': 'session_data_manager'})
        self.app._setObject('session_data_manager', legacy)
        transaction.commit()
        self.assertEqual(self.browser.get('/counter').text, '1')
        self.assertEqual(self.browser.get('/counter').text, '2')


class ZMITests(ManagerTestCase):

    def setUp(self):
        super().setUp()
        self.browser.authorization = ('Basic',
                                      (MANAGER_NAME, MANAGER_PASSWORD))

    def test_settings_tab_shows_masked_configuration(self):
        response = self.browser.get('/session_data_manager/manage_main')
        self.assertIn('session.type', response.text)
        self.assertIn('********', response.text)
        self.assertNotIn(
            config.get_configuration().options['secret'], response.text)

    def test_change_request_name(self):
        self.browser.post('/session_data_manager/manage_changeBeakerSDM',
                          {'title': 'T', 'requestName': 'BEAKER'})
        add_script(self.app, 'named',
                   'context.REQUEST.BEAKER["x"] = 1\n'
                   'return context.REQUEST.BEAKER["x"]')
        transaction.commit()
        self.assertEqual(self.browser.get('/named').text, '1')
        self.assertEqual(self.manager().title, 'T')

    def test_add_form(self):
        response = self.browser.get(
            '/manage_addProduct/BeakerSessionDataManager/'
            'addBeakerSessionDataManagerForm')
        self.assertIn('addBeakerSessionDataManager', response.text)
        self.browser.post(
            '/manage_addProduct/BeakerSessionDataManager/'
            'addBeakerSessionDataManager', {'id': 'other_sdm', 'title': ''},
            status=302)
        with zope.zopeApp() as app:
            self.assertEqual(app.other_sdm.meta_type,
                             'Beaker Session Data Manager')


class BrowserIdManagerRefusalTests(ManagerTestCase):
    """What cannot apply to Beaker ids is refused with BrowserIdManagerErr."""

    def test_refusals_and_flush(self):
        add_script(self.app, 'refusals', """\
from Products.Sessions.interfaces import BrowserIdManagerErr
bim = context.session_data_manager.getBrowserIdManager()
result = []
try:
    bim.isBrowserIdNew()
except BrowserIdManagerErr:
    result.append('no id yet')
bim.getBrowserId()
result.append(repr(bim.isBrowserIdFromForm()))
result.append(repr(bim.isBrowserIdFromUrl()))
result.append(repr(bim.getBrowserIdNamespaces()))
for call in (bim.getHiddenFormField,
             lambda: bim.setBrowserIdCookieByForce('a' * 32)):
    try:
        call()
    except BrowserIdManagerErr:
        result.append('refused')
bim.flushBrowserIdCookie()
return ' '.join(result)
""")
        transaction.commit()
        response = self.browser.get('/refusals')
        self.assertEqual(response.text,
                         "no id yet None None ('cookies',) refused refused")
        [cookie] = self.cookie(response)
        self.assertIn('Max-Age=0', cookie)


class ManagerMethodsTests(ManagerTestCase):

    def test_by_key_of_own_session_and_clear(self):
        add_script(self.app, 'own', """\
sdm = context.session_data_manager
session = sdm.getSessionData()
same = sdm.getSessionDataByKey(session.getContainerKey()) is not None
sdm.clearSessionData()
return '%s %s' % (same, session.keys())
""")
        transaction.commit()
        self.browser.authorization = ('Basic',
                                      (MANAGER_NAME, MANAGER_PASSWORD))
        self.browser.get('/counter')
        self.assertEqual(self.browser.get('/own').text, 'True []')
        self.assertEqual(self.browser.get('/counter').text, '1')
