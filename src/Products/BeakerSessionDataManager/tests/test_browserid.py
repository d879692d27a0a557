"""The signed session cookie."""
import unittest
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from ZPublisher.HTTPResponse import HTTPResponse

from Products.BeakerSessionDataManager.browserid import SessionCookie
from Products.BeakerSessionDataManager.browserid import cookie_life_days


SECRET = 'Qv3s9dJk2LmN8pRt5WxYz1AbCdEfGhIjKl'


class SessionCookieTests(unittest.TestCase):

    def header(self, cookie, session_id='e' * 32):
        response = HTTPResponse()
        cookie.send(response, session_id)
        return dict(response._cookie_list())['Set-Cookie']

    def test_ids_are_random_128_bits(self):
        ids = {SessionCookie.new_id() for _ in range(100)}
        self.assertEqual(len(ids), 100)
        self.assertTrue(all(len(i) == 32 for i in ids))

    def test_sign_and_verify(self):
        cookie = SessionCookie('k', SECRET)
        value = cookie.sign('e' * 32)
        self.assertEqual(cookie.verify(value), 'e' * 32)
        self.assertEqual(cookie.verify('"%s"' % value), 'e' * 32)
        self.assertIsNone(SessionCookie('k', SECRET + '!').verify(value))
        self.assertIsNone(cookie.verify(value.upper()))
        self.assertIsNone(cookie.verify(None))
        self.assertIsNone(cookie.verify(value[:-1]))
        # A non-ASCII signature with a well-formed id (once a TypeError).
        self.assertIsNone(cookie.verify('\x82' + value[1:]))

    def test_defaults(self):
        header = self.header(SessionCookie('k', SECRET))
        self.assertIn('HttpOnly', header)
        self.assertIn('SameSite=Lax', header)
        self.assertIn('Path=/', header)
        self.assertNotIn('Secure', header)
        self.assertNotIn('Max-Age', header)

    def test_options(self):
        header = self.header(SessionCookie(
            'k', SECRET, path='/shop', domain='example.com', secure=True,
            httponly=False, samesite='Strict', expires=False))
        self.assertIn('Path=/shop', header)
        self.assertIn('Domain=example.com', header)
        self.assertIn('Secure', header)
        self.assertIn('SameSite=Strict', header)
        self.assertNotIn('HttpOnly', header)
        self.assertIn('Max-Age=%d' % (10 * 365 * 24 * 3600), header)

    def test_expiry(self):
        header = self.header(SessionCookie(
            'k', SECRET, expires=timedelta(hours=1)))
        self.assertIn('Max-Age=3600', header)
        header = self.header(SessionCookie(
            'k', SECRET, expires=datetime(2030, 1, 2, 3, 4, 5)))
        self.assertIn('Expires=Wed, 02 Jan 2030 03:04:05 GMT', header)

    def test_expire(self):
        response = HTTPResponse()
        SessionCookie('k', SECRET, domain='example.com').expire(response)
        header = dict(response._cookie_list())['Set-Cookie']
        self.assertIn('Max-Age=0', header)
        self.assertIn('Domain=example.com', header)


class CookieLifeDaysTests(unittest.TestCase):
    """getCookieLifeDays() from each form of session.cookie_expires."""

    def test_forms(self):
        self.assertEqual(cookie_life_days(True), 0)
        self.assertEqual(cookie_life_days(False), 3650)
        self.assertEqual(cookie_life_days(timedelta(days=3, hours=5)), 3)
        self.assertEqual(cookie_life_days(timedelta(hours=5)), 0)
        self.assertEqual(cookie_life_days(
            datetime.now(timezone.utc).replace(tzinfo=None)
            + timedelta(days=7, hours=1)), 7)
        self.assertEqual(cookie_life_days(datetime(2000, 1, 1)), 0)
