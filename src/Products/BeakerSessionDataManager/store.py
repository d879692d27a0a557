"""Session records in a Beaker store, in Beaker's own record format.

Each session is one Beaker namespace named by the session id, holding the
key ``session``: the session dict (user keys plus ``_creation_time`` and
``_accessed_time``) serialized and base64-encoded, or encrypted, exactly as
``beaker.session.Session`` writes it.  Sessions written by Beaker's own
middleware and by this product can therefore share a store.
"""
import io
import os
import pickle
import threading
import time
from binascii import a2b_base64
from binascii import b2a_base64
from contextlib import contextmanager
from functools import partial

from beaker import crypto
from beaker.container import DBMNamespaceManager
from beaker.container import FileNamespaceManager
from beaker.crypto import DEFAULT_NONCE_BITS
from beaker.crypto import get_crypto_module
from beaker.crypto import get_nonce_size
from beaker.ext.sqla import SqlaNamespaceManager
from beaker.synchronization import FileSynchronizer

import transaction
from ZODB.POSException import ConflictError
from zope.interface import implementer

from . import references
from .interfaces import ISessionStore
from .interfaces import SessionValueError
from .jsonvalues import SessionJsonSerializer
from .jsonvalues import json_change_error
from .outages import describe
from .outages import warning_log
from .session import ACCESSED
from .session import refused_keys


RECORD_KEY = 'session'
# The access lock of these stores is already a cross-process file lock.
FILE_LOCKED = (FileNamespaceManager, DBMNamespaceManager)
# Let a store keep an expired record a little longer than the timeout so
# that a request straddling the deadline still finds it, as Beaker does.
TTL_MARGIN = 120
# Seconds a record's last access may lie ahead of this process's clock
# before a warning says that the clocks of the instances differ.
CLOCK_SKEW = 5
# Writers of one session that may come first in a row before a
# compare-and-set gives up.
MAX_ATTEMPTS = 50
# Remembered reads per thread, in case a request loads many sessions.
MAX_REMEMBERED = 16
# Stores that keep each session in a file or row of its own, which
# ``remove_if`` can remove (Beaker never removes them).
REMOVABLE = FILE_LOCKED + (SqlaNamespaceManager,)


class PlainUnpickler(pickle.Unpickler):
    """Loads plain data only: dicts, lists, strings, numbers.

    Beaker wraps every record in a pickle (a file's or row's dict, a
    Redis value), which holds nothing else.  Looking up no class or
    function, this unpickler runs no code that whoever can write to the
    store put there.
    """

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            'only plain data is read from the store, not %s.%s'
            % (module, name))


def plain_loads(data):
    """``pickle.loads`` for the store's pickles (see PlainUnpickler)."""
    return PlainUnpickler(io.BytesIO(data)).load()


def pickled_dict(data):
    """The dict pickled in ``data``, a session's file or row as Beaker
    writes it; empty if it holds no dict, None if it cannot be unpickled
    as plain data (a file a crash cut short, a row written by Python 2,
    one that refers to a class or function)."""
    try:
        contents = plain_loads(data)
    except Exception:
        return None
    return contents if isinstance(contents, dict) else {}


class Marker:
    """What ``remove_if`` passes for a record it cannot give."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


# A record that cannot be decoded (with this configuration's keys and
# serializer: other ones may read it).
UNREADABLE = Marker('UNREADABLE')
# A session file or row that cannot be unpickled, whatever the
# configuration: a write cut short by a crash, a row of Python 2.
DAMAGED = Marker('DAMAGED')


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
        self.timeout = timeout
        self.ttl = timeout + TTL_MARGIN if timeout else None
        if self.ttl:
            # Redis reads its key expiry from here, as with Beaker sessions.
            self.namespace_args.setdefault('timeout', self.ttl)
        self._json = serializer == 'json'
        if self._json:
            json_serializer = SessionJsonSerializer()
            self._dumps, self._loads = json_serializer.dumps, \
                json_serializer.loads
        else:
            # Protocol 2, as Beaker's PickleSerializer; ZODB objects as
            # references (see references.py).
            self._dumps = partial(references.dumps, protocol=2)
            self._loads = references.loads
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
    # (Beaker's b64encode and b64decode of beaker._compat, without the
    # calls around binascii's.)

    def _cipher_key(self, nonce):
        return crypto.generateCryptoKeys(
            self.encrypt_key, self.validate_key + nonce, 1,
            self.crypto_module.getKeyLength())

    def encode(self, record):
        if self._json:
            problem = json_change_error(record)
            if problem is not None:
                raise SessionValueError(
                    'The session cannot be stored: %s.' % problem)
        try:
            data = self._dumps(record)
        except Exception as exc:
            # A value the serializer cannot take is a bug to fix, not a
            # store outage (503).
            keys = refused_keys(record, self._dumps)
            raise SessionValueError(
                'The session cannot be stored: the value%s of %s cannot be '
                '%s: %s: %s'
                % ('s' if len(keys) > 1 else '',
                   ', '.join(map(repr, keys)) or 'a key',
                   'encoded as JSON' if self._json else 'pickled',
                   type(exc).__name__, exc)) from exc
        if not self.encrypt_key:
            return b2a_base64(data, newline=False).decode('ascii')
        nonce = b2a_base64(os.urandom(self.nonce_length), newline=False
                           ).decode('ascii')[:self.nonce_b64length]
        return nonce + b2a_base64(
            self.crypto_module.aesEncrypt(data, self._cipher_key(nonce)),
            newline=False).decode('ascii')

    def decode(self, raw):
        if not self.encrypt_key:
            return self._loads(a2b_base64(raw))
        nonce = raw[:self.nonce_b64length]
        payload = a2b_base64(raw[self.nonce_b64length:])
        return self._loads(
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
        return self._live_record(raw)

    def merge(self, session_id, apply):
        """See ISessionStore."""
        namespace = self._namespace(session_id)
        with self._locked(namespace):
            # An expired record is no session: the merge starts afresh
            # instead of bringing its data back.
            record = apply(self._live_record(self._read(namespace)))
            if record is None:
                if RECORD_KEY in namespace:
                    del namespace[RECORD_KEY]
            else:
                self._write(namespace, self.encode(record))
        return record

    def delete(self, session_id):
        """See ISessionStore."""
        self.merge(session_id, lambda record: None)

    # -- removing sessions (beaker-sessions cleanup) --

    @property
    def removable(self):
        """Whether ``remove_if`` works here: file, dbm and SQL stores."""
        return issubclass(self.namespace_class, REMOVABLE)

    def remove_if(self, session_id, condition):
        """Remove the file or row of ``session_id`` if ``condition(record,
        written)`` is true.

        The record is read under the lock ``merge`` takes, so a concurrent
        writer either comes first and ``condition`` sees its write, or waits
        and then writes afresh.  ``record`` is the decoded dict, None if
        the namespace holds no record, UNREADABLE or DAMAGED; ``written``
        is when the file or row was last written (seconds since the
        epoch).  Unlike ``merge`` this writes nothing when the condition is
        false, and leaves no empty file or row behind.  Returns whether it
        removed something.
        """
        namespace = self._namespace(session_id)
        if isinstance(namespace, FILE_LOCKED):
            return self._remove_file_if(namespace, condition)
        if isinstance(namespace, SqlaNamespaceManager):
            return self._remove_row_if(namespace, condition)
        raise TypeError('%s keeps no file or row per session' % self.name)

    def _remove_file_if(self, namespace, condition):
        lock = namespace.access_lock
        lock.acquire_write_lock()
        try:
            if isinstance(namespace, DBMNamespaceManager):
                paths = namespace.get_filenames()
            else:
                paths = [namespace.file] if os.path.exists(
                    namespace.file) else []
            if not paths:
                return False
            written = max(map(os.path.getmtime, paths))
            try:
                namespace.open('r', checkcount=True)
            except Exception:
                # Beaker cannot even unpickle the file (a dbm file may be
                # of a dbm module this Python lacks).
                record = DAMAGED if isinstance(
                    namespace, FileNamespaceManager) else UNREADABLE
                foreign = False
            else:
                try:
                    record = self._examine(namespace)
                    foreign = any(key not in (RECORD_KEY, b'session')
                                  for key in namespace.keys())
                finally:
                    namespace.close(checkcount=True)
            if foreign or not condition(record, written):
                return False
            namespace.do_remove()
            if isinstance(namespace, DBMNamespaceManager):
                try:
                    # dbm.dumb's backup file, which do_remove does not know.
                    os.remove(namespace.file + '.bak')
                except OSError:
                    pass
            forget_lock_file(lock)
            return True
        finally:
            lock.release_write_lock()

    def _remove_row_if(self, namespace, condition):
        with self._locked(namespace):
            written = row_written(namespace)
            if written is None:
                return False
            if namespace.damaged:
                record = DAMAGED
            elif set(namespace.keys()) - {RECORD_KEY}:
                return False
            else:
                record = self._examine(namespace)
            if not condition(record, written):
                return False
            # The namespace deletes the row it leaves empty; setting the
            # key first marks a row that was empty already as changed.
            namespace[RECORD_KEY] = None
            del namespace[RECORD_KEY]
            return True

    def _examine(self, namespace):
        try:
            raw = namespace[RECORD_KEY]
        except KeyError:
            return None
        except Exception:
            return UNREADABLE
        return self._examined(raw) if raw else None

    def _examined(self, raw):
        try:
            record = self.decode(raw)
        except Exception:
            return UNREADABLE
        return record if isinstance(record, dict) else UNREADABLE

    # -- helpers --

    @staticmethod
    def _read(namespace):
        try:
            return namespace[RECORD_KEY]
        except (KeyError, TypeError):
            return None

    def _write(self, namespace, raw):
        namespace.set_value(RECORD_KEY, raw, expiretime=self.ttl)

    def _live_record(self, raw):
        """The record stored as ``raw``, or None: if there is none, if it
        cannot be read (Beaker's ``invalidate_corrupt``, always on) and if
        it expired (``session.timeout``).  A last access ahead of this
        process's clock is logged (the clocks of instances differ)."""
        if not raw:
            return None
        try:
            record = self.decode(raw)
        except Exception as exc:
            self._undecodable(describe(exc))
            return None
        if not isinstance(record, dict):
            self._undecodable('a %s, not a dict' % type(record).__name__)
            return None
        accessed = record.get(ACCESSED)
        if not isinstance(accessed, (int, float)):
            return record  # Never expires.
        now = time.time()
        if self.timeout and now - accessed > self.timeout:
            return None
        if accessed > now + CLOCK_SKEW:
            warning_log.warn(
                'clock',
                'A session record in the %s was last accessed %d seconds '
                "ahead of this instance's clock: another Zope instance "
                'sharing the store has a clock ahead of this one, and '
                'sessions end early, or at once where the clocks differ by '
                'more than session.timeout. Keep the clocks of all of them '
                'in sync (NTP)', self.name, accessed - now)
        return record

    def _undecodable(self, why):
        """Say (once a minute) that a record could not be decoded: the
        browser gets a new session on every request if another instance
        sharing the store writes with other settings."""
        warning_log.warn(
            'undecodable',
            'A session record in the %s cannot be decoded (%s) with this '
            "instance's session.data_serializer (%s) and "
            'session.encrypt_key (%s): its browser gets a new session. '
            'Every Zope instance sharing the store needs the same '
            'session.data_serializer, session.encrypt_key and '
            'session.validate_key (a record of another application, or a '
            'damaged one, reads so too)', self.name, why,
            'json' if self._json else 'pickle',
            'set' if self.encrypt_key else 'not set')

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


class CompareAndSetStore(BeakerStore):
    """A store whose merge is a compare-and-set instead of a lock.

    Each thread remembers the stored value of the sessions it read last,
    which its next merge compares against; when another writer came first,
    the changes are applied again to the newer record, at most
    ``MAX_ATTEMPTS`` times in a row.
    """

    def __init__(self, namespace_class, namespace_args, **kw):
        super().__init__(namespace_class, namespace_args, **kw)
        self._local = threading.local()

    def _remembered(self):
        try:
            return self._local.remembered
        except AttributeError:
            remembered = self._local.remembered = {}
            return remembered

    def _remember(self, session_id, raw):
        remembered = self._remembered()
        if len(remembered) >= MAX_REMEMBERED:
            remembered.clear()
        remembered[session_id] = raw

    @staticmethod
    def _too_many_writers(session_id):
        """ConflictError: Zope retries the request."""
        return ConflictError(
            'session %s... was written by %d other requests while this one '
            'tried to write it' % (session_id[:8], MAX_ATTEMPTS))


def row_written(namespace):
    """When the row of an SQL namespace was last written, or None.

    Read on a connection of its own: the merge lock held meanwhile blocks
    writers, not readers.
    """
    import sqlalchemy as sa
    table = namespace.table
    with namespace.bind.connect() as connection:
        accessed = connection.execute(sa.select(table.c.accessed).where(
            table.c.namespace == namespace.namespace)).scalar()
    return None if accessed is None else accessed.timestamp()


def forget_lock_file(lock):
    """Remove the lock file of a removed session while holding it: a
    process that opens it later makes a new one."""
    if isinstance(lock, FileSynchronizer):
        try:
            os.remove(lock.filename)
        except OSError:
            pass


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

    def regenerate_id(self):
        """Give the session a new id (Beaker's ``regenerate_id``) and
        delete the old id's record once the transaction has committed:
        Beaker itself leaves it readable."""
        session = self._session
        if not session.is_new:
            transaction.get().addAfterCommitHook(
                remove_record, (session.namespace,))
        session.regenerate_id()
        return session.id


def remove_record(committed, namespace):
    """After-commit hook: delete the record of a namespace."""
    if not committed:
        return
    namespace.acquire_write_lock()
    try:
        if RECORD_KEY in namespace:
            del namespace[RECORD_KEY]
    finally:
        namespace.release_write_lock()
