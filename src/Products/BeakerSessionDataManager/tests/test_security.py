"""Secure by default: the secret, the cookie, the ids, and what dumps show.

Start-up with a weak secret is tried on a real instance, since what
matters is that Zope does not start.  Request dumps are what
Products.SiteErrorLog (Plone's error log) records for each error: the
``str()`` of the request, taken by a subscriber to the publication's
failure.
"""
import base64
import hmac
import logging
import shutil
import tempfile
import unittest
from hashlib import sha1

import pytest

import transaction
from zope.component import getGlobalSiteManager
from ZPublisher.interfaces import IPubFailure

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager.interfaces import SessionStoreError
from Products.BeakerSessionDataManager.interfaces import SessionValueError
from Products.BeakerSessionDataManager.testing import \
    BEAKER_SESSIONS_FUNCTIONAL_TESTING
from Products.BeakerSessionDataManager.testing import browser
from Products.BeakerSessionDataManager.tests import instance
from Products.BeakerSessionDataManager.tests.instance import \
    BEAKER_SESSION_DATA_MANAGER
from Products.BeakerSessionDataManager.tests.instance import COUNTER_SCRIPT
from Products.BeakerSessionDataManager.tests.instance import ZopeInstance
from Products.BeakerSessionDataManager.tests.test_manager import add_script


COOKIE = 'beaker.session.id'
PASSWORD = 'hunter2-Pa55word'
TOKEN = 'tok-4f9a8c2e1d'


def test_weak_secrets_stop_start_up_then_a_good_one_serves():
    with ZopeInstance(None) as zope:
        zope.setup(BEAKER_SESSION_DATA_MANAGER, COUNTER_SCRIPT)
        for secret, message in (
                (None, 'session.secret: required'),
                ('secret', 'session.secret: too weak'),
                ('Qv3s9dJk2LmN8pRt5WxYz1AbCdEfGhI',
                 'session.secret: too weak (31 characters)')):
            zope.configure(dict({'session.type': 'file'}, **(
                {'session.secret': secret} if secret else {})))
            with pytest.raises(RuntimeError) as caught:
                zope.start()
            assert message in str(caught.value)

        secret = instance.new_secret()
        zope.configure({'session.type': 'file', 'session.secret': secret,
                        'session.secure': 'true'})
        zope.start()
        ids = set()
        for _ in range(20):
            status, set_cookie, body = zope.get('/count')
            assert (status, body) == (200, '1')
            value, *flags = [part.strip() for part in set_cookie.split(';')]
            assert sorted(flags) == ['HttpOnly', 'Path=/', 'SameSite=Lax',
                                     'Secure']
            signature, session_id = value[len(COOKIE) + 1:][:40], value[
                len(COOKIE) + 41:]
            # 128 bits in hex, signed with the secret (HMAC-SHA1 as
            # Beaker's SignedCookie).
            assert len(session_id) == 32 and int(session_id, 16) >= 0
            assert signature == hmac.new(
                secret.encode(), session_id.encode(), sha1).hexdigest()
            ids.add(session_id)
        assert len(ids) == 20


class EncryptionConfigurationTests(unittest.TestCase):
    """``session.encrypt_key`` either encrypts the records or stops
    start-up: Beaker itself would fail each write without a validate_key,
    and store plain records without an AES module."""

    def setUp(self):
        self.addCleanup(setattr, config, '_current', config._current)
        self.settings = {'session.secret': instance.new_secret(),
                         'session.data_dir': tempfile.mkdtemp()}
        self.addCleanup(shutil.rmtree, self.settings['session.data_dir'])

    def assertRejected(self, message, **options):
        settings = dict(self.settings, **{
            'session.' + name: value for name, value in options.items()})
        with self.assertRaises(config.ConfigurationError) as caught:
            config.configure(settings)
        self.assertIn(message, str(caught.exception))

    def test_both_keys_strong(self):
        key = instance.new_secret()
        self.assertRejected('session.validate_key: required',
                            encrypt_key=key)
        self.assertRejected('session.encrypt_key: too weak', encrypt_key='k',
                            validate_key=key)
        self.assertRejected('session.validate_key: too weak',
                            encrypt_key=key, validate_key='secret')
        self.assertRejected('session.crypto_type', encrypt_key=key,
                            validate_key=key, crypto_type='rot13')

    def test_records_are_encrypted(self):
        store = config.configure(dict(
            self.settings, **{'session.encrypt_key': instance.new_secret(),
                              'session.validate_key': instance.new_secret()}
        )).store
        store.merge('e' * 32, lambda record: {'password': PASSWORD})
        self.assertEqual(store.load('e' * 32), {'password': PASSWORD})
        namespace = store._namespace('e' * 32)
        namespace.acquire_read_lock()
        try:
            raw = namespace['session']
        finally:
            namespace.release_read_lock()
        self.assertNotIn(PASSWORD.encode(), base64.b64decode(
            raw[store.nonce_b64length:]))


class JsonSerializerTests(unittest.TestCase):
    """``session.data_serializer json``: values are what JSON holds; what
    it cannot hold is a bug (500), not an outage (503).  (That the pickle
    around every record runs no code: test_stores.UnpicklableData.)"""

    def setUp(self):
        self.addCleanup(setattr, config, '_current', config._current)
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.store = config.configure({
            'session.secret': instance.new_secret(),
            'session.data_dir': directory,
            'session.data_serializer': 'json'}).store

    def test_json_values(self):
        record = {'cart': [1, 'two', None], 'user': {'name': 'x', 'n': 1.5},
                  'ok': True, 'pair': (1, 2)}
        self.store.merge('e' * 32, lambda stored: record)
        self.assertEqual(self.store.load('e' * 32), dict(record, pair=[1, 2]))

    def test_bytes_come_back_as_bytes(self):
        # As in stock sessions; PluggableAuthService keeps its CSRF token
        # as bytes.  A dict that only looks like the encoding stays a dict.
        record = {'token': b'\x00\xff', 'nested': [{'t': b'ab'}],
                  'lookalike': {'__bytes__': 'not base64!'}}
        self.store.merge('e' * 32, lambda stored: record)
        self.assertEqual(self.store.load('e' * 32), record)

    def test_a_dict_in_the_form_of_bytes_fails_the_commit(self):
        # It would come back as bytes.
        self.store.merge('e' * 32, lambda stored: {'n': 1})
        with self.assertRaises(SessionValueError) as caught:
            self.store.merge('e' * 32, lambda stored: {
                'payload': [{'__bytes__': 'aGk='}]})
        self.assertIn("the value of 'payload' cannot be encoded as JSON: it "
                      "holds a dict {'__bytes__': base64}",
                      str(caught.exception))
        self.assertEqual(self.store.load('e' * 32), {'n': 1})

    def test_other_values_fail_the_commit(self):
        with self.assertRaises(SessionValueError) as caught:
            self.store.merge('e' * 32, lambda stored: {'tags': {1, 2}})
        self.assertIn("the value of 'tags' cannot be encoded as JSON",
                      str(caught.exception))
        self.assertIsNone(self.store.load('e' * 32))
        self.assertNotIsInstance(caught.exception, SessionStoreError)
        self.assertIsInstance(caught.exception, TypeError)  # as stock's

    def test_keys_json_would_turn_into_strings_fail_the_commit(self):
        # json.dumps would store session[1] as session['1'] without a
        # word, and session[1] and session['1'] as one key.
        self.store.merge('e' * 32, lambda stored: {'n': 1})
        for record, message in (
                ({1: 'a', '1': 'b'}, "the key 1 (int) cannot be encoded"),
                ({'cart': [{'items': {7: 'x'}}]},
                 "the value of 'cart' cannot be encoded as JSON: it holds "
                 "a dict with the key 7 (int)")):
            with self.assertRaises(SessionValueError) as caught:
                self.store.merge('e' * 32, lambda stored: record)
            self.assertIn(message, str(caught.exception))
            self.assertIn('string keys only', str(caught.exception))
            self.assertEqual(self.store.load('e' * 32), {'n': 1})
        cycle = []
        cycle.append(cycle)
        with self.assertRaisesRegex(SessionValueError,
                                    "the value of 'cycle' cannot be encoded"):
            self.store.merge('e' * 32, lambda stored: {'cycle': cycle})


class RequestDumpTests(unittest.TestCase):
    """No password or token stored in a session shows in a request dump
    or in the log of an error."""

    layer = BEAKER_SESSIONS_FUNCTIONAL_TESTING

    def setUp(self):
        app = self.layer['app']
        add_script(app, 'login', """\
session = context.REQUEST.SESSION
session['password'] = %r
session['csrf_token'] = %r
return 'ok'
""" % (PASSWORD, TOKEN))
        add_script(app, 'fails_with_session', """\
context.REQUEST.SESSION.get('password')
raise ValueError('boom')
""")
        add_script(app, 'fails_without_session', "raise ValueError('boom')")
        add_script(app, 'dump', """\
context.REQUEST.SESSION.get('csrf_token')
return str(context.REQUEST) + context.REQUEST.text()
""")
        transaction.commit()
        self.dumps = []
        registry = getGlobalSiteManager()
        registry.registerHandler(self.record, (IPubFailure,))
        self.addCleanup(registry.unregisterHandler, self.record,
                        (IPubFailure,))
        self.browser = browser()
        self.assertEqual(self.browser.get('/login').text, 'ok')

    def record(self, event):
        # What Products.SiteErrorLog keeps of a failed request.
        self.dumps.append(str(event.request) + event.request.text())

    def assertNoSecrets(self, text):
        self.assertNotIn(PASSWORD, text)
        self.assertNotIn(TOKEN, text)

    def test_error_with_the_session_loaded(self):
        with self.assertLogs(level=logging.ERROR) as logged:
            self.browser.get('/fails_with_session', status=500)
        [dump] = self.dumps
        self.assertIn('&lt;BeakerSessionData id: ', dump)
        self.assertIn("keys: ['csrf_token', 'password']", dump)
        self.assertNoSecrets(dump)
        self.assertNoSecrets('\n'.join(logged.output))

    def test_error_without_the_session_does_not_load_it(self):
        other = browser()
        other.get('/fails_without_session', status=500)
        [dump] = self.dumps
        self.assertNotIn('BeakerSessionData id', dump)
        self.assertIn('BeakerSessionDataManager.getSessionData', dump)
        self.assertNotIn(COOKIE, str(other.cookies))
        self.assertNoSecrets(dump)

    def test_request_dump_in_a_page(self):
        # <dtml-var REQUEST> and friends.
        text = self.browser.get('/dump').text
        self.assertIn('<BeakerSessionData id: ', text)
        self.assertNoSecrets(text)

    def test_the_session_does_hold_them(self):
        # Else the tests above would prove nothing.
        store = config.get_configuration().store
        record = store.load(self.browser.cookies[COOKIE][-32:])
        self.assertEqual((record['password'], record['csrf_token']),
                         (PASSWORD, TOKEN))
