"""The session cookie, and the browser id manager API answered from it.

A browser id is the session id: 128 random bits, sent to the browser
signed with ``session.secret`` in the format of Beaker's ``SignedCookie``
(40 hex digits of HMAC-SHA1, then the id), so cookies made by Beaker's own
middleware and by this product are interchangeable.
"""
import hmac
import re
import secrets
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from hashlib import sha1

from AccessControl.class_init import InitializeClass
from AccessControl.Permissions import access_contents_information
from AccessControl.SecurityInfo import ClassSecurityInfo
from Acquisition import Implicit
from Acquisition import aq_parent
from Products.Sessions.interfaces import BrowserIdManagerErr
from Products.Sessions.interfaces import IBrowserIdManager
from zope.interface import implementer

from .outages import warning_log


SESSION_ID = re.compile(r'[0-9a-f]{32}\Z').match
SIGNATURE_LENGTH = 40
DAY = 24 * 3600
FAR_FUTURE = 3650 * DAY
# Cookie values whose signature was checked, remembered so that a browser's
# next requests cost a dict lookup instead of an HMAC.
VERIFIED_CACHE_SIZE = 10000


class SessionCookie:
    """Signs, reads and writes the session cookie."""

    def __init__(self, name, secret, path='/', domain=None, secure=False,
                 httponly=True, samesite='Lax', expires=True):
        self.name = name
        self._secret = secret.encode('utf-8')
        self.path = path
        self.domain = domain
        self.secure = secure
        self.httponly = httponly
        self.samesite = samesite
        self.expires = expires
        self._params = self._cookie_params()
        self._verified = {}

    def _cookie_params(self):
        params = {'path': self.path, 'http_only': self.httponly}
        if self.domain:
            params['domain'] = self.domain
        if self.secure:
            params['secure'] = True
        if self.samesite:
            params['same_site'] = self.samesite
        if self.expires is False:
            params['max_age'] = FAR_FUTURE
        elif isinstance(self.expires, timedelta):
            params['max_age'] = int(self.expires.total_seconds())
        elif isinstance(self.expires, datetime):
            params['expires'] = self.expires.strftime(
                '%a, %d %b %Y %H:%M:%S GMT')
        return params

    @staticmethod
    def new_id():
        return secrets.token_hex(16)

    def _signature(self, session_id):
        return hmac.new(
            self._secret, session_id.encode('ascii'), sha1).hexdigest()

    def sign(self, session_id):
        return self._signature(session_id) + session_id

    def verify(self, value):
        """Return the session id of a correctly signed value, else None."""
        if not isinstance(value, str):
            return None
        session_id = self._verified.get(value)
        if session_id is not None:
            return session_id
        signed = value.strip('"')
        session_id = signed[SIGNATURE_LENGTH:]
        if not SESSION_ID(session_id):
            return None
        signature = signed[:SIGNATURE_LENGTH]
        # compare_digest refuses str with non-ASCII characters.
        if not signature.isascii() or not hmac.compare_digest(
                signature, self._signature(session_id)):
            wrongly_signed('session.secret')
            return None
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[value] = session_id
        return session_id

    def read(self, request):
        """The verified session id the browser sent, or None."""
        cookies = getattr(request, 'cookies', None) or {}
        return self.verify(cookies.get(self.name))

    def send(self, response, session_id):
        """Set the cookie of ``session_id`` in ``response``; return a
        function that takes it back (to what ``response`` was to send)."""
        before = response.cookies.get(self.name)
        if before is not None:
            before = dict(before)  # setCookie changes it in place.
        response.setCookie(
            self.name, self.sign(session_id), quoted=False, **self._params)

        def take_back():
            if before is None:
                response.cookies.pop(self.name, None)
            else:
                response.cookies[self.name] = before
        return take_back

    def expire(self, response):
        params = {'path': self.path}
        if self.domain:
            params['domain'] = self.domain
        response.expireCookie(self.name, **params)


def wrongly_signed(option, done='signed'):
    """Say (once a minute) that a session cookie of the right form was
    ``done`` with another key than ``option``: instances sharing a store
    with different keys make every browser that goes from one to the other
    start a new session on each request."""
    warning_log.warn(
        'signature',
        'A session cookie was %s with another key than this instance\'s '
        '%s: its browser gets a new session. Every Zope instance sharing '
        'the sessions needs the same %s (a cookie from before the key was '
        'changed, one of another application that uses the same cookie '
        'name, or a forged one, reads so too)', done, option, option)


def cookie_life_days(expires):
    """``session.cookie_expires`` as stock's cookie life: whole days, 0 for
    a cookie that ends with the browser session."""
    if expires is True:
        return 0
    if expires is False:
        return FAR_FUTURE // DAY
    if isinstance(expires, datetime):
        # Beaker writes it as GMT.
        expires = expires - datetime.now(timezone.utc).replace(tzinfo=None)
    return max(int(expires.total_seconds() // DAY), 0)


@implementer(IBrowserIdManager)
class BeakerBrowserIdManager(Implicit):
    """Answers the browser id manager questions for Beaker sessions.

    Made afresh for each call of ``getBrowserIdManager()`` and wrapped in
    the session data manager, which holds the per-request state.
    """

    security = ClassSecurityInfo()
    security.declareObjectProtected(access_contents_information)

    meta_type = 'Beaker Browser Id Manager'

    def _manager(self):
        return aq_parent(self)

    def _session(self, create=0):
        return self._manager()._browser_session(create=create, id_only=True)

    def _existing_session(self):
        session = self._session()
        if session is None:
            raise BrowserIdManagerErr(
                'There is no browser id (no session) for this request.')
        return session

    @security.protected(access_contents_information)
    def hasBrowserId(self):
        """See IBrowserIdManager."""
        return self._session() is not None

    @security.protected(access_contents_information)
    def getBrowserId(self, create=1):
        """See IBrowserIdManager: the id of this browser's session."""
        session = self._session(create=create)
        if session is None:
            return None
        return session.getContainerKey()

    @security.protected(access_contents_information)
    def getBrowserIdName(self):
        """See IBrowserIdManager: the name of the session cookie."""
        return self._cookie().name

    @security.protected(access_contents_information)
    def isBrowserIdNew(self):
        """See IBrowserIdManager: true if the browser has not sent it yet."""
        return self._existing_session()._is_new

    # The next three answer 1 or None, as stock's.

    @security.protected(access_contents_information)
    def isBrowserIdFromCookie(self):
        """See IBrowserIdManager: Beaker ids only ever come from cookies."""
        return None if self._existing_session()._is_new else 1

    @security.protected(access_contents_information)
    def isBrowserIdFromForm(self):
        """See IBrowserIdManager: never, ids are not taken from forms."""
        self._existing_session()

    @security.protected(access_contents_information)
    def isBrowserIdFromUrl(self):
        """See IBrowserIdManager: never, ids are not taken from URLs."""
        self._existing_session()

    @security.protected(access_contents_information)
    def getBrowserIdNamespaces(self):
        """Where browser ids are looked for: cookies only."""
        return ('cookies',)

    @security.protected(access_contents_information)
    def isUrlInBidNamespaces(self):
        """See IBrowserIdManager: never."""
        return False

    @security.protected(access_contents_information)
    def getAutoUrlEncoding(self):
        """Never: ids are not put in URLs."""
        return False

    # The cookie, as stock's manager describes its own (set here by the
    # session.* options, not by setters).

    def _cookie(self):
        return self._manager()._configuration().cookie

    @security.protected(access_contents_information)
    def getCookiePath(self):
        return self._cookie().path

    @security.protected(access_contents_information)
    def getCookieDomain(self):
        return self._cookie().domain or ''

    @security.protected(access_contents_information)
    def getCookieLifeDays(self):
        return cookie_life_days(self._cookie().expires)

    @security.protected(access_contents_information)
    def getCookieHTTPOnly(self):
        return bool(self._cookie().httponly)

    @security.protected(access_contents_information)
    def getCookieSecure(self):
        return bool(self._cookie().secure)

    @security.protected(access_contents_information)
    def getCookieSameSite(self):
        return self._cookie().samesite

    @security.protected(access_contents_information)
    def flushBrowserIdCookie(self):
        """See IBrowserIdManager: tell the browser to drop the cookie."""
        manager = self._manager()
        manager._configuration().cookie.expire(manager._request().response)

    @security.protected(access_contents_information)
    def setBrowserIdCookieByForce(self, bid):
        """Refused: a visitor must never be able to choose a session id."""
        raise BrowserIdManagerErr(
            'Beaker session ids cannot be forced: they are random, signed '
            'and must exist in the session store.')

    @security.protected(access_contents_information)
    def getHiddenFormField(self):
        """Refused: Beaker session ids travel only in their cookie."""
        raise BrowserIdManagerErr(
            'Beaker session ids travel only in cookies, not in forms.')

    @security.protected(access_contents_information)
    def encodeUrl(self, url, style='querystring', create=1):
        """Refused: Beaker session ids travel only in their cookie."""
        raise BrowserIdManagerErr(
            'Beaker session ids travel only in cookies, not in URLs.')


InitializeClass(BeakerBrowserIdManager)
