"""Beaker sessions in a Plone 6 site, through Plone's own pages and forms."""
import unittest

import transaction
from plone.app.testing import SITE_OWNER_NAME
from plone.app.testing import SITE_OWNER_PASSWORD
from plone.app.testing import TEST_USER_NAME
from plone.app.testing import TEST_USER_PASSWORD

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager.interfaces import \
    IBeakerSessionDataManager
from Products.BeakerSessionDataManager.testing import \
    addStockSessionDataManager
from Products.BeakerSessionDataManager.testing import browser
from Products.BeakerSessionDataManager.testing import replaceSessionDataManager

from .testing import BEAKER_PLONE_FUNCTIONAL_TESTING


COOKIE = 'beaker.session.id'
LOGGED_IN = 'id="personaltools-logout"'
ADD_FORM = ('/manage_addProduct/BeakerSessionDataManager/'
            'addBeakerSessionDataManagerForm')


def log_in(client, name=TEST_USER_NAME, password=TEST_USER_PASSWORD):
    """Fill in and submit Plone's login form as a browser does."""
    form = client.get('/plone/login').forms['LoginForm']
    form['__ac_name'] = name
    form['__ac_password'] = password
    return form.submit('buttons.login')


def manager():
    """A browser logged in as the Zope root's Manager (HTTP basic)."""
    client = browser()
    client.authorization = ('Basic', (SITE_OWNER_NAME, SITE_OWNER_PASSWORD))
    return client


class PloneTestCase(unittest.TestCase):

    layer = BEAKER_PLONE_FUNCTIONAL_TESTING

    def setUp(self):
        self.app = self.layer['app']
        self.store = config.get_configuration().store
        self.browser = browser()

    def session_id(self, client=None):
        return (client or self.browser).cookies[COOKIE][-32:]

    def sent_ids(self, response):
        return [value.split(';')[0].split('=', 1)[1][-32:]
                for value in response.headers.getall('Set-Cookie')
                if value.startswith(COOKIE + '=')]

    def checkout(self, query='', client=None):
        return (client or self.browser).get(
            '/plone/@@checkout' + query).text


class SessionCodeTests(PloneTestCase):
    """The documentation's session code and Plone's pages."""

    def test_documented_session_code_works_unchanged(self):
        self.assertEqual(self.checkout('?add=book'), 'cart: book')
        self.assertEqual(self.checkout('?add=pen'), 'cart: book,pen')
        # An attribute change of the persistent object is saved without
        # setting it into the session again, as the documentation says.
        self.assertEqual(self.checkout('?step=shipping'),
                         'shipping: book,pen')
        self.assertEqual(self.checkout(), 'shipping: book,pen')
        self.assertIsNotNone(self.store.load(self.session_id()))
        # Another visitor has a checkout of their own.
        self.assertEqual(self.checkout(client=browser()), 'cart: ')

    def test_plone_pages_render(self):
        self.checkout('?add=book')
        for client in (browser(), self.browser):
            for path in ('/plone', '/plone/login'):
                response = client.get(path)
                self.assertEqual(response.status_int, 200, path)
                self.assertIn('</html>', response.text)
        response = manager().get('/plone/@@overview-controlpanel')
        self.assertEqual(response.status_int, 200)
        self.assertIn('Site Setup', response.text)

    def test_pages_that_ignore_the_session_start_none(self):
        for path in ('/plone', '/plone/login'):
            response = self.browser.get(path)
            self.assertEqual(self.sent_ids(response), [], path)

    def test_session_writes_need_no_csrf_token(self):
        """plone.protect checks ZODB writes; session writes are none."""
        log_in(self.browser)
        response = self.browser.get('/plone/@@checkout?add=book')
        self.assertEqual(response.status_int, 200)
        response = self.browser.post('/plone/@@checkout', {'add': 'pen'})
        self.assertEqual(response.status_int, 200)
        self.assertEqual(self.checkout(), 'cart: book,pen')


class LoginTests(PloneTestCase):
    """Logging in and out through Plone's forms (PAS login event)."""

    def test_session_survives_login_under_a_new_id(self):
        self.checkout('?add=book')
        before = self.browser.cookies[COOKIE]
        old = self.session_id()
        response = log_in(self.browser)
        self.assertEqual(response.status_int, 302)
        self.assertIn('__ac', self.browser.cookies)
        # The new id goes out with the login response itself.
        [new] = self.sent_ids(response)
        self.assertNotEqual(new, old)
        self.assertEqual(self.session_id(), new)
        self.assertIn(LOGGED_IN, self.browser.get('/plone').text)
        self.assertEqual(self.checkout('?add=pen'), 'cart: book,pen')
        # The pre-login id no longer reaches the data.
        self.assertIsNone(self.store.load(old))
        attacker = browser()
        attacker.set_cookie(COOKIE, before)
        self.assertEqual(self.checkout(client=attacker), 'cart: ')
        self.assertNotEqual(self.session_id(attacker), old)
        self.assertEqual(self.checkout(), 'cart: book,pen')

    def test_login_without_a_session_starts_none(self):
        response = log_in(self.browser)
        self.assertEqual(response.status_int, 302)
        self.assertIn('__ac', self.browser.cookies)
        self.assertEqual(self.sent_ids(response), [])
        self.assertNotIn(COOKIE, self.browser.cookies)

    def test_failed_login_changes_nothing(self):
        self.checkout('?add=book')
        old = self.session_id()
        response = log_in(self.browser, password='wrong')
        self.assertEqual(response.status_int, 200)
        self.assertNotIn(LOGGED_IN, response.text)
        self.assertEqual(self.sent_ids(response), [])
        self.assertEqual(self.checkout(), 'cart: book')
        self.assertEqual(self.session_id(), old)

    def test_logout_clears_the_session(self):
        self.checkout('?add=book')
        log_in(self.browser)
        self.checkout('?add=pen')
        session_id = self.session_id()
        self.browser.get('/plone/logout')
        self.assertNotIn(LOGGED_IN, self.browser.get('/plone').text)
        self.assertIsNone(self.store.load(session_id))
        self.assertEqual(self.checkout(), 'cart: ')
        self.assertNotEqual(self.session_id(), session_id)


class ZMITests(PloneTestCase):
    """ZMI forms of a Plone instance: plone.protect must not cancel them."""

    def test_add_form_inside_the_plone_site(self):
        client = manager()
        # Without the form's token plone.protect cancels the POST silently.
        client.post('/plone/manage_addProduct/BeakerSessionDataManager/'
                    'addBeakerSessionDataManager', {'id': 'beaker_sessions'})
        transaction.begin()
        self.assertNotIn('beaker_sessions', self.app.plone.objectIds())
        form = client.get('/plone' + ADD_FORM).forms[0]
        self.assertIn('_authenticator', form.fields)
        form['id'] = 'beaker_sessions'
        form['title'] = 'Sessions of the site'
        response = form.submit()
        self.assertEqual(response.status_int, 302)
        self.assertIn('/plone/manage_workspace', response.location)
        transaction.begin()
        portal = self.app.plone
        self.assertIn('beaker_sessions', portal.objectIds())
        self.assertEqual(portal.beaker_sessions.title, 'Sessions of the site')

    def test_replace_the_stock_manager_keeps_logins(self):
        replaceSessionDataManager(self.app, addStockSessionDataManager)
        transaction.commit()
        log_in(self.browser)
        self.assertIn(LOGGED_IN, self.browser.get('/plone').text)
        form = manager().get(ADD_FORM).forms[0]
        # An existing session_data_manager: "replace" is ticked for us.
        self.assertEqual(form['id'].value, 'session_data_manager')
        self.assertTrue(form['replace:boolean'].checked)
        response = form.submit()
        self.assertEqual(response.status_int, 302)
        transaction.begin()
        self.assertTrue(IBeakerSessionDataManager.providedBy(
            self.app.session_data_manager))
        # The Plone login is the __ac cookie, not a session: still there.
        self.assertIn(LOGGED_IN, self.browser.get('/plone').text)
        self.assertEqual(self.checkout('?add=book'), 'cart: book')
        self.assertIsNotNone(self.store.load(self.session_id()))
