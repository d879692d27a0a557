"""``session.type cookie``: the whole session in a signed, encrypted cookie.

Through Zope's WSGI publisher, with the code under test in Python Scripts,
and against Beaker's own SessionMiddleware for the cookie format.
"""
import secrets
import time
import unittest

import webtest
from beaker.middleware import SessionMiddleware
from beaker.session import CookieSession
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import transaction
from Products.Five import BrowserView
from Testing.makerequest import makerequest
from zope.component import getGlobalSiteManager
from zope.interface import Interface
from zope.publisher.interfaces.browser import IDefaultBrowserLayer

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager import testing
from Products.BeakerSessionDataManager.cookiestore import MAX_COOKIE_SIZE
from Products.BeakerSessionDataManager.interfaces import ConfigurationError
from Products.BeakerSessionDataManager.interfaces import SessionTooLargeError
from Products.BeakerSessionDataManager.interfaces import SessionValueError
from Products.BeakerSessionDataManager.tests.instance import ZopeInstance
from Products.BeakerSessionDataManager.tests.servers import in_ci
from Products.BeakerSessionDataManager.tests.test_conformance import \
    PublishingTestCase
from Products.BeakerSessionDataManager.tests.test_conformance import \
    SessionScenarios
from Products.BeakerSessionDataManager.tests.test_instances import count
from Products.BeakerSessionDataManager.tests.test_instances import started


COOKIE = 'beaker.session.id'
VALIDATE_KEY = secrets.token_urlsafe(36)
ENCRYPT_KEY = secrets.token_urlsafe(36)
COOKIE_SETTINGS = {
    'session.type': 'cookie',
    'session.validate_key': VALIDATE_KEY,
    'session.encrypt_key': ENCRYPT_KEY,
}
HOSTILE = settings(max_examples=300, deadline=None, database=None,
                   derandomize=in_ci(),
                   suppress_health_check=[HealthCheck.too_slow])
# Beaker's own cookie sessions with the same keys.
BEAKER_OPTIONS = {
    'session.type': 'cookie',
    'session.validate_key': VALIDATE_KEY,
    'session.encrypt_key': ENCRYPT_KEY,
    'session.data_serializer': 'json',
    'session.timeout': 1200,
}


def cookie_settings():
    return dict(COOKIE_SETTINGS), lambda: None


COOKIE_SESSIONS_FUNCTIONAL_TESTING = testing.store_functional_testing(
    'cookie', cookie_settings)


def reconfigure(test, **options):
    """Configure the cookie store with ``options`` for one test."""
    saved = config._current
    test.addCleanup(setattr, config, '_current', saved)
    settings = dict(COOKIE_SETTINGS)
    settings.update({'session.' + name: value
                     for name, value in options.items()})
    return config.configure(settings)


def cookie_value(header):
    """The value a Set-Cookie header gives our cookie, as sent."""
    name, _, rest = header.strip().partition('=')
    assert name == COOKIE, header
    return rest.split(';')[0]


def beaker_app(environ, start_response):
    """A WSGI application using Beaker's cookie session: shows its items,
    and sets ``key`` to ``value`` when asked to."""
    session = environ['beaker.session']
    params = dict(part.split('=', 1)
                  for part in environ['QUERY_STRING'].split('&') if part)
    if 'key' in params:
        session[params['key']] = params['value']
        session.save()
    items = sorted((key, value) for key, value in session.items()
                   if not key.startswith('_'))
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [repr(items).encode('utf-8')]


class CommitTwice(BrowserView):
    """Unrestricted code committing in the middle of the request."""

    def __call__(self, invalidate=False):
        sdm = self.context.session_data_manager
        session = sdm.getSessionData()
        session['first'] = 1
        transaction.commit()
        if invalidate:
            session.invalidate()
            transaction.commit()
            return repr(sdm.getSessionData(create=0))
        session['second'] = 2
        return 'ok'


class TestCookieStoreScenarios(SessionScenarios, PublishingTestCase):
    """The conformance scenarios, against the cookie store."""

    layer = COOKIE_SESSIONS_FUNCTIONAL_TESTING
    cookie_name = COOKIE

    def test_manager_gets_session_data_of_another_browser_by_key(self):
        # Deliberate difference: another browser's session is in that
        # browser's cookie, out of reach.
        self.addSetter()
        self.addByKey()
        visitor = self.browser()
        self.get(visitor, '/set_value', key='x', value='from visitor')
        key = self.browserId(visitor)
        manager = self.browser(manager=True)
        self.assertEqual(self.get(manager, '/by_key', key=key), 'None')


class CookieStoreTestCase(PublishingTestCase):

    layer = COOKIE_SESSIONS_FUNCTIONAL_TESTING

    def setUp(self):
        super().setUp()
        self.addSetter()
        self.addReader()
        self.addScript('container_key', '''\
return container.REQUEST.SESSION.getContainerKey()
''')
        self.addScript('has_session', '''\
return repr(bool(context.session_data_manager.hasSessionData()))
''')

    def cookie(self):
        return config.get_configuration().cookie

    def set_cookies(self, response):
        return [value for value in response.headers.getall('Set-Cookie')
                if value.strip().startswith(COOKIE + '=')]

    def sent_value(self, response):
        """The cookie value exactly as the response sent it."""
        [header] = self.set_cookies(response)
        return cookie_value(header)

    def browser_with(self, value):
        browser = self.browser()
        browser.set_cookie(COOKIE, value)
        return browser

    def record(self, **data):
        now = time.time()
        record = {'_id': secrets.token_hex(16), '_creation_time': now,
                  '_accessed_time': now}
        record.update(data)
        return record


class CookieTests(CookieStoreTestCase):

    def test_the_session_travels_in_the_cookie_unquoted(self):
        browser = self.browser()
        response = browser.get('/set_value', params={'key': 'x', 'value': 1})
        value = self.sent_value(response)
        # Base64 and hex only: Zope's URL quoting would show as %2B, %3D.
        self.assertNotIn('%', value)
        self.assertNotIn('"', value)
        record = self.cookie().decode(value)
        self.assertEqual(record['x'], '1')
        self.assertEqual(record['_id'], self.get(browser, '/container_key'))

    def test_cookie_attributes(self):
        response = self.browser().get('/container_key')
        [header] = self.set_cookies(response)
        attributes = header.split('; ')[1:]
        self.assertEqual(attributes, ['Path=/', 'HttpOnly', 'SameSite=Lax'])

    def test_configured_cookie_attributes(self):
        reconfigure(self, secure='true', cookie_domain='nohost',
                    samesite='strict', cookie_path='/', cookie_expires='600',
                    httponly='true')
        response = self.browser().get('/container_key')
        [header] = self.set_cookies(response)
        attributes = header.split('; ')[1:]
        self.assertTrue(attributes.pop().startswith('Expires='))
        self.assertEqual(sorted(attributes), [
            'Domain=nohost', 'HttpOnly', 'Max-Age=600', 'Path=/',
            'SameSite=Strict', 'Secure'])

    def test_reading_does_not_send_the_cookie_again(self):
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='1')
        response = browser.get('/show_keys')
        self.assertEqual(response.text, "[('x', '1')]")
        self.assertEqual(self.set_cookies(response), [])

    def test_reading_refreshes_an_old_access_time(self):
        accessed = time.time() - 60  # beyond the write granularity (30 s)
        record = self.record(x='1', _accessed_time=accessed)
        browser = self.browser_with(self.cookie().encode(record))
        response = browser.get('/show_keys')
        self.assertEqual(response.text, "[('x', '1')]")
        refreshed = self.cookie().decode(self.sent_value(response))
        self.assertGreater(refreshed['_accessed_time'], accessed)
        self.assertEqual(refreshed['_id'], record['_id'])
        self.assertEqual(refreshed['x'], '1')

    def test_expired_cookie_reads_as_a_fresh_session(self):
        timeout = config.get_configuration().timeout
        record = self.record(
            x='1', _accessed_time=time.time() - timeout - 10)
        browser = self.browser_with(self.cookie().encode(record))
        self.assertEqual(self.get(browser, '/has_session'), 'False')
        self.assertEqual(self.get(browser, '/show_keys'), '[]')
        self.assertNotEqual(
            self.get(browser, '/container_key'), record['_id'])

    def test_valid_cookie_is_a_session(self):
        record = self.record(x='1')
        browser = self.browser_with(self.cookie().encode(record))
        self.assertEqual(self.get(browser, '/has_session'), 'True')
        self.assertEqual(self.get(browser, '/container_key'), record['_id'])

    def test_garbage_and_tampered_cookies_start_a_fresh_session(self):
        cookie = self.cookie()
        value = cookie.encode(self.record(x='1'))
        other_keys = config.SessionConfiguration(dict(
            COOKIE_SETTINGS, **{
                'session.validate_key': secrets.token_urlsafe(36),
                'session.encrypt_key': secrets.token_urlsafe(36)})).cookie
        flipped = value[:60] + ('A' if value[60] != 'A' else 'B') + value[61:]
        for garbage in [
                'x', '0' * 40, value[:-10], flipped,
                other_keys.encode(self.record(x='1')),
                cookie.sign('garbage payload'),
                cookie.encode(['not', 'a', 'dict']),
                cookie.encode({'x': '1'}),
                cookie.encode(self.record(_id='../../etc/passwd')),
                '"%s"' % value[:-1]]:
            browser = self.browser_with(garbage)
            self.assertEqual(self.get(browser, '/has_session'), 'False',
                             garbage)
            self.assertEqual(self.get(browser, '/show_keys'), '[]')
            # The fresh session replaces the garbage.
            self.get(browser, '/set_value', key='y', value='2')
            self.assertEqual(self.get(browser, '/show_keys'), "[('y', '2')]")

    def test_decoding_garbage_gives_None(self):
        cookie = self.cookie()
        for garbage in [None, '', 'é' * 80, '0' * 40 + 'é' * 40,
                        cookie.sign('=' * 40), 12]:
            self.assertIsNone(cookie.decode(garbage), garbage)

    def test_invalidate_expires_the_cookie(self):
        self.addScript('invalidate', '''\
container.REQUEST.SESSION.invalidate()
return 'ok'
''')
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='1')
        response = browser.get('/invalidate')
        [header] = self.set_cookies(response)
        self.assertIn('Max-Age=0', header)
        self.assertNotIn(COOKIE, browser.cookies)

    def test_a_copied_cookie_stays_valid_after_invalidate(self):
        # Documented limit: nothing on the server remembers the
        # invalidation.
        self.addScript('invalidate', '''\
container.REQUEST.SESSION.invalidate()
return 'ok'
''')
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='1')
        copy = self.browser_with(browser.cookies[COOKIE])
        self.get(browser, '/invalidate')
        self.assertEqual(self.get(browser, '/show_keys'), '[]')
        self.assertEqual(self.get(copy, '/show_keys'), "[('x', '1')]")

    def test_regenerate_keeps_the_data_under_a_new_id(self):
        self.addScript('regenerate', '''\
return context.session_data_manager.regenerateSessionId()
''')
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='1')
        old_id = self.get(browser, '/container_key')
        new_id = self.get(browser, '/regenerate')
        self.assertNotEqual(new_id, old_id)
        self.assertEqual(self.get(browser, '/container_key'), new_id)
        self.assertEqual(self.get(browser, '/show_keys'), "[('x', '1')]")

    def test_an_invalidated_session_leaves_the_cookie_to_its_successor(self):
        # regenerateSessionId() commits both; the votes come in the order
        # of the ids, so either may come first.
        store = config.get_configuration().store
        old, new = secrets.token_hex(16), secrets.token_hex(16)
        writes = {old: lambda record: None,
                  new: lambda record: self.record(x='1')}
        for order in ((old, new), (new, old)):
            request = makerequest(self.app).REQUEST
            bound = store.bind(request)
            for session_id in order:
                bound.merge(session_id, writes[session_id])
            transaction.commit()
            [(name, header)] = request.response.accumulated_headers
            record = self.cookie().decode(cookie_value(header))
            self.assertEqual((record['_id'], record['x']), (new, '1'))
            self.assertEqual(bound.session_id, new)

    def test_commits_within_a_request(self):
        gsm = getGlobalSiteManager()
        required = (Interface, IDefaultBrowserLayer)
        gsm.registerAdapter(CommitTwice, required, Interface, 'commit-twice')
        self.addCleanup(gsm.unregisterAdapter, CommitTwice, required,
                        Interface, 'commit-twice')
        browser = self.browser()
        response = browser.get('/@@commit-twice')
        # One cookie, the last committed session.
        self.assertEqual(len(self.set_cookies(response)), 1)
        self.assertEqual(self.get(browser, '/show_keys'),
                         "[('first', 1), ('second', 2)]")
        response = browser.get('/@@commit-twice', params={'invalidate': 1})
        self.assertEqual(response.text, 'None')
        self.assertEqual(len(self.set_cookies(response)), 1)
        self.assertNotIn(COOKIE, browser.cookies)


class HostileCookieTests(CookieStoreTestCase):
    """Whatever comes as the cookie: a 200, a fresh session or the real one.
    """

    def setUp(self):
        super().setUp()
        self.app = testing.ZopeWSGIApp()
        browser = self.browser()
        self.real = self.sent_value(
            browser.get('/set_value', params={'key': 'x', 'value': '1'}))

    def publish(self, header):
        """GET /show_keys with the raw Cookie header ``header`` (bytes);
        the status and the body."""
        status, _, body = testing.publish_raw_cookie(
            self.app, '/show_keys', header)
        return status, body

    @HOSTILE
    @given(st.binary(max_size=300))
    def test_any_bytes_as_the_cookie(self, value):
        status, body = self.publish(COOKIE.encode() + b'=' + value)
        self.assertEqual((status, body), ('200 OK', '[]'))

    @HOSTILE
    @given(st.data())
    def test_damaged_real_cookie(self, data):
        value = self.real
        at = data.draw(st.integers(0, len(value) - 1))
        damage = data.draw(st.sampled_from(['truncate', 'replace', 'insert']))
        if damage == 'truncate':
            value = value[:at]
        elif damage == 'replace':
            value = value[:at] + data.draw(st.characters(
                max_codepoint=255).filter(lambda c: c != value[at])) + \
                value[at + 1:]
        else:
            value = value[:at] + data.draw(st.text(
                min_size=1, max_size=5)) + value[at:]
        status, body = self.publish(
            ('%s=%s' % (COOKIE, value)).encode('utf-8'))
        # The real session only if Zope dropped what was added (a blank
        # or a quote), never a 5xx.
        self.assertEqual(status, '200 OK')
        self.assertIn(body, ('[]', "[('x', '1')]"))


class TooLargeTests(CookieStoreTestCase):

    def setUp(self):
        super().setUp()
        self.addScript('set_large', '''\
container.REQUEST.SESSION['large'] = value * int(count)
return 'ok'
''', params='value, count')
        # Random: the session is compressed before it is encrypted.
        self.large = {'value': secrets.token_urlsafe(MAX_COOKIE_SIZE),
                      'count': 1}

    def test_too_large_session_fails_the_request_and_keeps_the_cookie(self):
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='1')
        before = browser.cookies[COOKIE]
        response = browser.get('/set_large', params=self.large, status=500)
        self.assertEqual(self.set_cookies(response), [])
        self.assertEqual(browser.cookies[COOKIE], before)
        self.assertEqual(self.get(browser, '/show_keys'), "[('x', '1')]")

    def test_the_error_says_what_is_wrong(self):
        browser = self.browser()
        browser.app.handle_errors = False
        browser.extra_environ['x-wsgiorg.throw_errors'] = True
        with self.assertRaises(SessionTooLargeError) as caught:
            browser.get('/set_large', params=self.large)
        message = str(caught.exception)
        self.assertIn('does not fit in its cookie', message)
        self.assertIn("'large'", message)
        self.assertIn(str(MAX_COOKIE_SIZE), message)

    def refused(self, line):
        """The SessionValueError of a request that runs ``line`` in a
        session the browser has; its cookie is left as it was."""
        self.addScript('refused', line + '\nreturn \'ok\'\n')
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='1')
        before = browser.cookies[COOKIE]
        response = browser.get('/refused', status=500)
        self.assertEqual(self.set_cookies(response), [])
        self.assertEqual(browser.cookies[COOKIE], before)
        browser.app.handle_errors = False
        browser.extra_environ['x-wsgiorg.throw_errors'] = True
        with self.assertRaises(SessionValueError) as caught:
            browser.get('/refused')
        return str(caught.exception)

    def test_values_JSON_cannot_hold_fail_the_request(self):
        message = self.refused(
            "container.REQUEST.SESSION['when'] = context.ZopeTime()")
        self.assertIn('JSON values only', message)
        self.assertIn("not 'when'", message)

    def test_keys_JSON_would_turn_into_strings_fail_the_request(self):
        message = self.refused("container.REQUEST.SESSION[1] = 'one'")
        self.assertIn('the key 1 (int) cannot be encoded as JSON', message)

    def test_tuples_come_back_as_lists(self):
        # JSON has no tuples.
        self.addScript('set_tuple', '''\
container.REQUEST.SESSION['t'] = (1, 2)
return 'ok'
''')
        browser = self.browser()
        self.get(browser, '/set_tuple')
        self.assertEqual(self.get(browser, '/show_keys'), "[('t', [1, 2])]")

    def test_compressible_values_fit(self):
        browser = self.browser()
        self.get(browser, '/set_large', value='x', count='20000')
        self.assertEqual(self.get(browser, '/has_session'), 'True')


class BeakerInteropTests(CookieStoreTestCase):
    """Cookies of Beaker's SessionMiddleware (type cookie, same keys, JSON)
    and ours are interchangeable."""

    def setUp(self):
        super().setUp()
        self.beaker = webtest.TestApp(
            SessionMiddleware(beaker_app, BEAKER_OPTIONS))

    def beaker_get(self, cookie, **params):
        return self.beaker.get('/', params=params,
                               headers={"Cookie": "%s=%s" % (COOKIE, cookie)})

    def test_beaker_cookie_is_read_here(self):
        response = self.beaker.get('/', params={'key': 'x', 'value': 'b'})
        [header] = response.headers.getall('Set-Cookie')
        browser = self.browser_with(cookie_value(header))
        self.assertEqual(self.get(browser, '/has_session'), 'True')
        self.assertEqual(self.get(browser, '/show_keys'), "[('x', 'b')]")
        # And written back, still readable by Beaker.
        response = browser.get('/set_value', params={'key': 'y', 'value': 'z'})
        self.assertEqual(self.beaker_get(self.sent_value(response)).text,
                         "[('x', 'b'), ('y', 'z')]")

    def test_our_cookie_is_read_by_beaker(self):
        browser = self.browser()
        response = browser.get('/set_value', params={'key': 'x', 'value': 'z'})
        value = self.sent_value(response)
        session_id = self.get(browser, '/container_key')
        self.assertEqual(self.beaker_get(value).text, "[('x', 'z')]")
        # Beaker keeps the id and writes a cookie we read again.
        response = self.beaker_get(value, key='y', value='b')
        [header] = response.headers.getall('Set-Cookie')
        browser = self.browser_with(cookie_value(header))
        self.assertEqual(self.get(browser, '/container_key'), session_id)
        self.assertEqual(self.get(browser, '/show_keys'),
                         "[('x', 'z'), ('y', 'b')]")


class ConfigurationTests(unittest.TestCase):

    def setUp(self):
        saved = config._current
        self.addCleanup(setattr, config, '_current', saved)

    def settings(self, **options):
        settings = dict(COOKIE_SETTINGS)
        for name, value in options.items():
            if value is None:
                settings.pop('session.' + name)
            else:
                settings['session.' + name] = value
        return settings

    def assertRejected(self, option, settings, text=''):
        with self.assertRaises(ConfigurationError) as caught:
            config.configure(settings)
        self.assertIn(option, str(caught.exception))
        self.assertIn(text, str(caught.exception))

    def test_no_secret_needed_and_json_by_default(self):
        configuration = config.configure(self.settings())
        self.assertEqual(configuration.options['data_serializer'], 'json')
        self.assertEqual(configuration.store.name, 'cookie session store')
        self.assertEqual(configuration.cookie.name, COOKIE)

    def test_both_keys_are_required(self):
        self.assertRejected('session.validate_key',
                            self.settings(validate_key=None), 'required')
        self.assertRejected('session.encrypt_key',
                            self.settings(encrypt_key=None), 'required')

    def test_weak_keys_are_refused(self):
        self.assertRejected('session.validate_key',
                            self.settings(validate_key='changeme'), 'weak')
        self.assertRejected('session.encrypt_key',
                            self.settings(encrypt_key='a' * 40), 'weak')

    def test_pickle_is_refused(self):
        self.assertRejected('session.data_serializer',
                            self.settings(data_serializer='pickle'), 'json')
        config.configure(self.settings(data_serializer='json'))

    def test_crypto_options_are_checked(self):
        self.assertRejected('session.crypto_type',
                            self.settings(crypto_type='rot13'))
        self.assertRejected('session.encrypt_nonce_bits',
                            self.settings(encrypt_nonce_bits='12'))


def test_real_instance_round_trip_beaker_reads():
    """Through runwsgi (waitress): the cookie arrives unquoted, comes back,
    and Beaker's own ``CookieSession`` reads it."""
    with ZopeInstance(COOKIE_SETTINGS) as zope:
        started(zope)
        body, cookie = count(zope)
        assert body == '1' and '%' not in cookie and '"' not in cookie
        body, cookie = count(zope, cookie)
        assert body == '2'
        session = CookieSession(
            {'cookie': cookie}, validate_key=VALIDATE_KEY,
            encrypt_key=ENCRYPT_KEY, data_serializer='json')
        assert not session.is_new and session['count'] == 2
