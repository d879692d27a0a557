"""Beaker's SessionMiddleware in the WSGI pipeline owns the session."""
import os
import unittest

import webtest
from beaker.middleware import SessionMiddleware

import transaction

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager.testing import \
    BEAKER_SESSIONS_FUNCTIONAL_TESTING
from Products.BeakerSessionDataManager.testing import ZopeWSGIApp
from Products.BeakerSessionDataManager.tests.test_manager import COUNTER
from Products.BeakerSessionDataManager.tests.test_manager import add_script


class MiddlewareTests(unittest.TestCase):

    layer = BEAKER_SESSIONS_FUNCTIONAL_TESTING

    def setUp(self):
        app = self.layer['app']
        add_script(app, 'counter', COUNTER)
        add_script(app, 'fails', "context.REQUEST.SESSION['n'] = 100\n"
                                 "raise ValueError('boom')")
        add_script(app, 'untouched', "return 'no session'")
        transaction.commit()
        # As in zope.ini: the middleware's options, not zope.conf's.
        saved = config._current
        config.reset()
        self.addCleanup(setattr, config, '_current', saved)
        directory = os.path.join(self.layer['beaker_dir'], 'middleware')
        pipeline = SessionMiddleware(ZopeWSGIApp(), {
            'session.type': 'file',
            'session.data_dir': directory,
            'session.key': 'mw_session',
            'session.secret': 'a middleware secret of enough length',
        })
        self.browser = webtest.TestApp(
            pipeline, extra_environ={'HTTP_HOST': 'nohost'})

    def set_cookies(self, response):
        return response.headers.getall('Set-Cookie')

    def test_session_survives_requests_with_one_cookie(self):
        first = self.browser.get('/counter')
        self.assertEqual(first.text, '1')
        [cookie] = self.set_cookies(first)
        self.assertTrue(cookie.strip().startswith('mw_session='), cookie)
        second = self.browser.get('/counter')
        self.assertEqual(second.text, '2')
        self.assertLessEqual(len(self.set_cookies(second)), 1)

    def test_aborted_request_writes_nothing(self):
        self.browser.get('/counter')
        self.browser.get('/fails', status=500)
        self.assertEqual(self.browser.get('/counter').text, '2')

    def test_untouched_request_sends_no_cookie(self):
        response = self.browser.get('/untouched')
        self.assertEqual(self.set_cookies(response), [])
