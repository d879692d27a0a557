"""Beaker's SessionMiddleware in the WSGI pipeline owns the session."""
import logging
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
        self.browser = self.pipeline(
            secret='a middleware secret of enough length')

    def pipeline(self, **options):
        directory = os.path.join(self.layer['beaker_dir'], 'middleware')
        options = dict({'type': 'file', 'data_dir': directory,
                        'key': 'mw_session'}, **options)
        pipeline = SessionMiddleware(ZopeWSGIApp(), {
            'session.' + name: value for name, value in options.items()})
        return webtest.TestApp(
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

    def test_a_weak_secret_or_none_is_refused(self):
        # Beaker's middleware takes any; without one it accepts an id the
        # visitor chooses.
        for options in ({'secret': 'short'}, {}):
            browser = self.pipeline(**options)
            browser.cookies['mw_session'] = '0123456789abcdef' * 2
            with self.assertLogs(level=logging.ERROR) as logged:
                browser.get('/counter', status=500)
            self.assertIn("ConfigurationError: Beaker's SessionMiddleware "
                          "(zope.ini): beaker.session.secret: ",
                          '\n'.join(logged.output))
            self.assertEqual(browser.get('/untouched').text, 'no session')

    def test_untouched_request_sends_no_cookie(self):
        response = self.browser.get('/untouched')
        self.assertEqual(self.set_cookies(response), [])
