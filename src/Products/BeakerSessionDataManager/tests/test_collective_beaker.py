"""Beside collective.beaker 1.0b3, which 2.x sites still have installed.

collective.beaker puts a Beaker session in ``environ['beaker.session']`` at
the start of each request and saves it after the response.  The manager
then adapts that session like the middleware's: it hands over its data,
applies the committed changes, and neither saves it a second time nor
sends a cookie of its own.  (collective.beaker itself fails any request
that has to send a new session cookie, with Beaker >= 1.11; see README.)
"""
import secrets
import unittest
import uuid

from beaker.session import Session
from beaker.session import SignedCookie

import transaction
from App.config import getConfiguration
from plone.testing import Layer
from plone.testing import zca
from plone.testing import zope
from zope.configuration import xmlconfig

from Products.BeakerSessionDataManager import testing
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests.test_manager import COUNTER
from Products.BeakerSessionDataManager.tests.test_manager import add_script


class CollectiveBeakerLayer(Layer):
    """collective.beaker's zcml, read with its own ``<product-config>``."""

    defaultBases = (testing.BEAKER_SESSIONS_FIXTURE,)

    def setUp(self):
        self['redis'] = redis = servers.shared_redis()
        self['session_options'] = options = {
            'type': 'ext:redis',
            'url': redis.url,
            'key': 'cb_session',
            'secret': secrets.token_hex(20),
        }
        configuration = getConfiguration()
        self.saved = getattr(configuration, 'product_config', None)
        configuration.product_config = {'beaker': {
            'session.%s' % name: value for name, value in options.items()}}
        zca.pushGlobalRegistry()
        self['configurationContext'] = context = zca.stackConfigurationContext(
            self.get('configurationContext'))
        import collective.beaker
        xmlconfig.file('configure.zcml', collective.beaker, context=context)

    def tearDown(self):
        zca.popGlobalRegistry()
        del self['configurationContext']
        getConfiguration().product_config = self.saved
        del self['redis']
        del self['session_options']


COLLECTIVE_BEAKER_FIXTURE = CollectiveBeakerLayer()
COLLECTIVE_BEAKER_FUNCTIONAL_TESTING = zope.FunctionalTesting(
    bases=(COLLECTIVE_BEAKER_FIXTURE,), name='CollectiveBeaker:Functional')


class CollectiveBeakerTests(unittest.TestCase):

    layer = COLLECTIVE_BEAKER_FUNCTIONAL_TESTING

    def setUp(self):
        app = self.layer['app']
        add_script(app, 'counter', COUNTER)
        add_script(app, 'peek', "return context.REQUEST.SESSION.get('n')")
        add_script(app, 'fails', "context.REQUEST.SESSION['n'] = 100\n"
                                 "raise ValueError('boom')")
        transaction.commit()
        self.options = self.layer['session_options']
        self.redis = self.layer['redis'].client()
        self.browser = testing.browser()

    def existing_session(self, **data):
        """A session the browser got earlier, saved by Beaker itself."""
        session_id = uuid.uuid4().hex
        session = Session({}, id=session_id, use_cookies=False,
                          **self.options)
        session.update(data)
        session.save()
        cookie = SignedCookie(self.options['secret'])
        cookie[self.options['key']] = session_id
        value = cookie.value_encode(cookie[self.options['key']].value)[1]
        self.browser.set_cookie(self.options['key'], value)
        return session_id

    def stored(self, session_id):
        session = Session({}, id=session_id, use_cookies=False,
                          **self.options)
        return dict(session)

    def sets(self):
        return int(self.redis.info('commandstats')
                   .get('cmdstat_set', {}).get('calls', 0))

    def test_changes_reach_collective_beakers_session(self):
        session_id = self.existing_session(n=41)
        response = self.browser.get('/counter')
        self.assertEqual(response.text, '42')
        self.assertEqual(self.stored(session_id)['n'], 42)
        self.assertEqual(self.browser.get('/counter').text, '43')

    def test_the_session_is_saved_once_and_no_cookie_is_sent(self):
        self.existing_session(n=1)
        before = self.sets()
        reading = self.browser.get('/peek')
        saves_when_reading = self.sets() - before
        before = self.sets()
        writing = self.browser.get('/counter')
        saves_when_writing = self.sets() - before
        self.assertEqual(writing.text, '2')
        # collective.beaker saves every accessed session once; a write
        # through the manager adds no save of its own.
        self.assertGreater(saves_when_reading, 0)
        self.assertEqual(saves_when_writing, saves_when_reading)
        self.assertEqual(reading.headers.getall('Set-Cookie'), [])
        self.assertEqual(writing.headers.getall('Set-Cookie'), [])

    def test_aborted_request_leaves_no_trace(self):
        # collective.beaker saves the session after failed requests too;
        # the manager's changes reach it only at commit, so nothing of the
        # failed request is saved.
        session_id = self.existing_session(n=7)
        self.browser.get('/fails', status=500)
        self.assertEqual(self.stored(session_id)['n'], 7)
        self.assertEqual(self.browser.get('/counter').text, '8')

    def test_collective_beaker_itself_fails_new_sessions(self):
        # Why the product warns at start-up while collective.beaker is
        # installed: its end-of-request handler reads Beaker's removed
        # ``Session._path`` whenever it must send a new cookie.
        self.browser.app.handle_errors = False
        with self.assertRaisesRegex(AttributeError, '_path'):
            self.browser.get('/peek')
