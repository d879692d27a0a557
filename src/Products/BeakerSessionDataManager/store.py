"""Session records in a Beaker store, in Beaker's own record format.

Each session is one Beaker namespace named by the session id, holding the
key ``session``: the session dict (user keys plus ``_creation_time`` and
``_accessed_time``) serialized and base64-encoded, or encrypted, exactly as
``beaker.session.Session`` writes it.  Sessions written by Beaker's own
middleware and by this product can therefore share a store.
"""
import os
from contextlib import contextmanager

from beaker import crypto
from beaker._compat import b64decode
from beaker._compat import b64encode
from beaker.container import DBMNamespaceManager
from beaker.container import FileNamespaceManager
from beaker.crypto import DEFAULT_NONCE_BITS
from beaker.crypto import get_crypto_module
from beaker.crypto import get_nonce_size
from beaker.util import JsonSerializer
from beaker.util import PickleSerializer

from zope.interface import implementer

from .interfaces import ISessionStore


RECORD_KEY = 'session'
# The access lock of these stores is already a cross-process file lock.
FILE_LOCKED = (FileNamespaceManager, DBMNamespaceManager)
# Let a store keep an expired record a little longer than the timeout so
# that a request straddling the deadline still finds it, as Beaker does.
TTL_MARGIN = 120


@implementer(ISessionStore)
class BeakerStore:
    """Reads and writes session records through a Beaker namespace class."""

    def __init__(self, namespace_class, namespace_args, data_dir=None,
                 serializer='pickle', timeout=None, encrypt_key=None,
                 validate_key=None, crypto_type='default',
                 encrypt_nonce_bits=DEFAULT_NONCE_BITS, name=None):
        self.namespace_class = namespace_class
        self.namespace_args = dict(namespace_args)
        self.data_dir = data_dir
        self.ttl = timeout + TTL_MARGIN if timeout else None
        if self.ttl:
            # Redis reads its key expiry from here, as with Beaker sessions.
            self.namespace_args.setdefault('timeout', self.ttl)
        self.serializer = (JsonSerializer() if serializer == 'json'
                           else PickleSerializer())
        self.encrypt_key = encrypt_key
        self.validate_key = validate_key
        if encrypt_key:
            self.crypto_module = get_crypto_module(crypto_type)
            self.nonce_length, self.nonce_b64length = get_nonce_size(
                encrypt_nonce_bits)
        for directory in (data_dir, self.namespace_args.get('lock_dir')):
            if directory:
                os.makedirs(directory, exist_ok=True)
        self.name = name or '%s store' % namespace_class.__name__

    def _namespace(self, session_id):
        return self.namespace_class(
            session_id, data_dir=self.data_dir, digest_filenames=False,
            **self.namespace_args)

    # -- record encoding, compatible with beaker.session.Session --

    def _cipher_key(self, nonce):
        return crypto.generateCryptoKeys(
            self.encrypt_key, self.validate_key + nonce, 1,
            self.crypto_module.getKeyLength())

    def encode(self, record):
        data = self.serializer.dumps(record)
        if not self.encrypt_key:
            return b64encode(data)
        nonce = b64encode(os.urandom(self.nonce_length))[
            :self.nonce_b64length]
        return nonce + b64encode(
            self.crypto_module.aesEncrypt(data, self._cipher_key(nonce)))

    def decode(self, raw):
        if not self.encrypt_key:
            return self.serializer.loads(b64decode(raw))
        nonce = raw[:self.nonce_b64length]
        payload = b64decode(raw[self.nonce_b64length:])
        return self.serializer.loads(
            self.crypto_module.aesDecrypt(payload, self._cipher_key(nonce)))

    # -- ISessionStore --

    def load(self, session_id):
        """See ISessionStore."""
        namespace = self._namespace(session_id)
        namespace.acquire_read_lock()
        try:
            raw = self._read(namespace)
        finally:
            namespace.release_read_lock()
        return self._decoded(raw)

    def merge(self, session_id, apply):
        """See ISessionStore."""
        namespace = self._namespace(session_id)
        with self._locked(namespace):
            record = apply(self._decoded(self._read(namespace)))
            if record is None:
                if RECORD_KEY in namespace:
                    del namespace[RECORD_KEY]
            else:
                namespace.set_value(
                    RECORD_KEY, self.encode(record), expiretime=self.ttl)
        return record

    def delete(self, session_id):
        """See ISessionStore."""
        self.merge(session_id, lambda record: None)

    # -- helpers --

    @staticmethod
    def _read(namespace):
        try:
            return namespace[RECORD_KEY]
        except (KeyError, TypeError):
            return None

    def _decoded(self, raw):
        if not raw:
            return None
        try:
            record = self.decode(raw)
        except Exception:
            # A record we cannot read is no session: Beaker's
            # invalidate_corrupt, always on.
            return None
        return record if isinstance(record, dict) else None

    @contextmanager
    def _locked(self, namespace):
        if isinstance(namespace, FILE_LOCKED):
            namespace.acquire_write_lock()
            try:
                yield
            finally:
                namespace.release_write_lock()
            return
        lock = namespace.get_creation_lock(RECORD_KEY)
        lock.acquire()
        try:
            namespace.acquire_write_lock()
            try:
                yield
            finally:
                namespace.release_write_lock()
        finally:
            lock.release()


@implementer(ISessionStore)
class MiddlewareStore:
    """The session Beaker's SessionMiddleware put in the WSGI environ.

    The middleware loads the session, saves it and sends its cookie after
    the response; this store only hands its data over and applies the
    committed changes to it.  Beaker saves the whole session, so concurrent
    requests of one browser are not merged in this mode.
    """

    name = 'session of Beaker\'s SessionMiddleware'

    def __init__(self, beaker_session):
        self.beaker_session = beaker_session

    @property
    def _session(self):
        lazy = self.beaker_session
        return lazy._session() if hasattr(lazy, '_session') else lazy

    @property
    def session_id(self):
        return self._session.id

    @property
    def is_new(self):
        return self._session.is_new

    def load(self, session_id):
        """See ISessionStore."""
        return dict(self._session)

    def merge(self, session_id, apply):
        """See ISessionStore."""
        session = self._session
        record = apply(dict(session))
        if record is None:
            self.beaker_session.delete()
        else:
            session.clear()
            session.update(record)
            # For the middleware's lazy session object this only marks it
            # dirty: the middleware saves it once, after the response.
            self.beaker_session.save()
        return record

    def delete(self, session_id):
        """See ISessionStore."""
        self.merge(session_id, lambda record: None)
