"""The client-side store (``session.type cookie``): the session in its cookie.

The cookie has the format of Beaker's ``CookieSession``: the HMAC-SHA1
signature (``validate_key``, 40 hex digits) of a nonce followed by the
base64 of the session dict, serialized as JSON and encrypted with AES
(``encrypt_key`` and ``validate_key``).  Beaker's SessionMiddleware with
``type = cookie``, ``data_serializer = json`` and the same keys reads the
cookies written here, and the other way round.

Nothing is kept on the server: each request's store is the cookie the
request carried, and a commit writes the merged session into the
response.  Zope's ``response.setCookie`` URL-quotes every value (even with
``quoted=False``), and Beaker rejects the quoted value, so the cookie goes
out as a Set-Cookie header of its own.
"""
import hmac
import os
import re

from beaker import crypto
from beaker._compat import b64decode
from beaker._compat import b64encode

import transaction
from zope.interface import implementer
from ZPublisher.cookie import convertCookieParameter
from ZPublisher.cookie import getCookieParamPolicy

from .browserid import SESSION_ID
from .browserid import SIGNATURE_LENGTH
from .browserid import SessionCookie
from .browserid import wrongly_signed
from .interfaces import ISessionStore
from .interfaces import SessionTooLargeError
from .interfaces import SessionValueError
from .jsonvalues import SessionJsonSerializer
from .jsonvalues import dumps
from .jsonvalues import json_change_error
from .session import expired
from .session import largest_keys
from .session import refused_keys


# Browsers keep cookies of at least 4096 bytes, name, value and attributes
# together (RFC 6265, 6.1); larger ones are dropped without a word.
MAX_COOKIE_SIZE = 4096
ID = '_id'
# Where a request keeps its cookie stores.
REQUEST_KEY = '_beaker_cookie_stores'
# The signature a cookie of Beaker's format begins with.
HEX_SIGNATURE = re.compile(r'[0-9a-f]{%d}\Z' % SIGNATURE_LENGTH).match


class SessionRecordCookie(SessionCookie):
    """The session cookie when it carries the whole session.

    It answers the manager as the id cookie of the server-side stores does;
    the session id is the ``_id`` of the session it carries.
    """

    def __init__(self, validate_key, encrypt_key, crypto_module,
                 nonce_bits=crypto.DEFAULT_NONCE_BITS, timeout=None,
                 **params):
        super().__init__(secret=validate_key, **params)
        self.timeout = timeout
        self.validate_key = validate_key
        self.encrypt_key = encrypt_key
        self.crypto = crypto_module
        self.nonce_length, self.nonce_b64length = crypto.get_nonce_size(
            nonce_bits)
        self.serializer = SessionJsonSerializer()
        self.store = CookieStore(self)

    def read(self, request):
        """The id of the session the browser sent, if intact and ours."""
        return self.store.bind(request).session_id

    def send(self, response, session_id):
        """Nothing yet: the cookie is written with the session at commit."""

    # -- the cookie value, as beaker.session.CookieSession writes it --

    def _cipher_key(self, nonce):
        return crypto.generateCryptoKeys(
            self.encrypt_key, self.validate_key + nonce, 1,
            self.crypto.getKeyLength())

    def encode(self, record):
        """The signed cookie value carrying ``record``."""
        data = self.serializer.dumps(record)
        nonce = b64encode(os.urandom(self.nonce_length))[
            :self.nonce_b64length]
        return self.sign(nonce + b64encode(
            self.crypto.aesEncrypt(data, self._cipher_key(nonce))))

    def decode(self, value):
        """The session in a cookie value; None unless intact and ours."""
        if not value or not isinstance(value, str):
            return None
        value = value.strip('"')
        try:
            payload = value[SIGNATURE_LENGTH:]
            if not hmac.compare_digest(value[:SIGNATURE_LENGTH],
                                       self._signature(payload)):
                if HEX_SIGNATURE(value[:SIGNATURE_LENGTH]):
                    wrongly_signed('session.validate_key')
                return None
        except Exception:
            return None
        try:
            # Signed with our key: only now is it worth decrypting.
            nonce = payload[:self.nonce_b64length]
            record = self.serializer.loads(self.crypto.aesDecrypt(
                b64decode(payload[self.nonce_b64length:]),
                self._cipher_key(nonce)))
        except Exception:
            # Whoever signed it had our validate_key.
            wrongly_signed('session.encrypt_key', 'encrypted')
            return None
        if isinstance(record, dict) and isinstance(record.get(ID), str) \
                and SESSION_ID(record[ID]):
            return record
        return None

    def header(self, value, **params):
        """The Set-Cookie header value for ``value``, as Zope formats its
        cookies but with the value unquoted."""
        attributes = dict(convertCookieParameter(name, param)
                          for name, param in (params or self._params).items())
        parts = ['%s=%s' % (self.name, value)]
        for name, param in getCookieParamPolicy().parameters(
                self.name, attributes):
            if param is not None:
                parts.append(name if param is True else '%s=%s' % (
                    name, param))
        return '; '.join(parts)

    def expired_header(self):
        params = {'path': self.path, 'max_age': 0}
        if self.domain:
            params['domain'] = self.domain
        return self.header('', **params)


class CookieStore:
    """What the configuration holds: a store for each request."""

    name = 'cookie session store'

    def __init__(self, cookie):
        self.cookie = cookie

    def bind(self, request):
        """The store of the session cookie ``request`` carried."""
        stores = request.__dict__.setdefault(REQUEST_KEY, {})
        store = stores.get(self)
        if store is None:
            store = stores[self] = RequestCookieStore(self.cookie, request)
        return store


@implementer(ISessionStore)
class RequestCookieStore:
    """The session cookie of one request, as a session store.

    ``merge`` applies the request's changes to the session the request
    carried, checks that the result fits in a cookie and, once the
    transaction has committed, sends it.  Another browser's session cannot
    be read: ``load`` knows only the session of this request.
    """

    name = CookieStore.name
    # What a merge makes is sent only once the transaction has committed.
    writes_after_commit = True

    def __init__(self, cookie, request):
        self.cookie = cookie
        self.response = request.response
        cookies = getattr(request, 'cookies', None) or {}
        record = cookie.decode(cookies.get(cookie.name))
        if record is not None and expired(record, cookie.timeout):
            record = None  # No session, and a new id.
        self.record = record
        # (session id, record or None to expire, header) for the
        # transaction being committed.
        self._outgoing = None
        self._hooked = None
        self._sent = None

    @property
    def session_id(self):
        return self.record[ID] if self.record is not None else None

    def load(self, session_id):
        """See ISessionStore."""
        if self.record is not None and self.record[ID] == session_id:
            return dict(self.record)
        return None

    def merge(self, session_id, apply):
        """See ISessionStore; the cookie is sent after the commit."""
        record = apply(self.load(session_id))
        if record is None:
            # An invalidated session does not expire the cookie of the
            # session that replaces it in the same transaction.
            if self._outgoing is None or self._outgoing[0] == session_id:
                self._outgoing = (session_id, None, None)
        else:
            record[ID] = session_id
            self._outgoing = (session_id, record, self._header(record))
        current = transaction.get()
        if self._hooked is not current:
            current.addAfterCommitHook(self._committed)
            self._hooked = current
        return record

    def delete(self, session_id):
        """See ISessionStore."""
        self.merge(session_id, lambda record: None)

    def _header(self, record):
        problem = json_change_error(record)
        if problem is not None:
            raise SessionValueError(
                'The session cannot be stored in its cookie: %s.' % problem)
        try:
            header = self.cookie.header(self.cookie.encode(record))
        except (TypeError, ValueError) as exc:
            raise SessionValueError(
                'The session cannot be stored in its cookie: the cookie '
                'store keeps JSON values only (str, int, float, bool, None, '
                'list, dict) and bytes; not %s: %s'
                % (', '.join(map(repr, refused_keys(record, dumps))), exc))
        if len(header) > MAX_COOKIE_SIZE:
            raise SessionTooLargeError(
                'The session does not fit in its cookie: %d bytes, browsers '
                'keep at most %d per cookie. Store less in the session (the '
                'largest values: %s), or use a server-side session.type.'
                % (len(header), MAX_COOKIE_SIZE,
                   ', '.join(map(repr, largest_keys(
                       record, lambda key, value: len(dumps(value)))))))
        return header

    def _committed(self, committed):
        outgoing = self._outgoing
        self._outgoing = self._hooked = None
        if not committed or outgoing is None:
            return
        session_id, self.record, header = outgoing
        headers = self.response.accumulated_headers
        if self._sent in headers:
            # Committed twice in one request: the last session wins.
            headers.remove(self._sent)
        self._sent = ('Set-Cookie', header or self.cookie.expired_header())
        self.response.addHeader(*self._sent)
