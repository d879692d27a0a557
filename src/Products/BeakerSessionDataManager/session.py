"""The session object add-ons see: Transience's transient object API.

It holds the data loaded from the store for one request and records what
the request changes, so that the transaction data manager can write just
those changes onto the latest stored state at commit.
"""
import marshal
import time
from hashlib import sha256

from AccessControl.class_init import InitializeClass
from AccessControl.SecurityInfo import ClassSecurityInfo
from Acquisition import Implicit
from Acquisition import aq_base
from zope.interface import implementer

from . import references
from .datamanager import SessionWriter
from .interfaces import IBeakerSessionData


CREATED = '_creation_time'
ACCESSED = '_accessed_time'
MODIFIED = '_modified_time'
# A browser id was handed out (getBrowserId), but no session data yet.
ID_ONLY = '_browser_id_only'
# Beaker's own bookkeeping keys, which this product does not use.
BEAKER_KEYS = ('_domain', '_path', '_id')
# Keys Beaker and this product keep in the record beside the user's data.
INTERNAL_KEYS = frozenset((CREATED, ACCESSED, MODIFIED, ID_ONLY)
                          + BEAKER_KEYS)
# Stored before a user's key that would read as one of those once any
# such marks are off (``session['_id']`` is stored as ``~_id``,
# ``session['~_id']`` as ``~~_id``): stock sessions take any key.
USER_KEY_MARK = '~'
# Seconds between access-time writes of a session that is only read (the
# value Products.Transience uses).
WRITE_GRANULARITY = 30
IMMUTABLE_TYPES = (str, bytes, int, float, complex, bool, type(None),
                   frozenset)
# The same, for a test of the exact type (no call) before is_immutable.
SIMPLE_TYPES = frozenset(IMMUTABLE_TYPES)
_marker = object()


def is_immutable(value):
    if isinstance(value, IMMUTABLE_TYPES):
        return True
    if type(value) is tuple:
        return all(is_immutable(item) for item in value)
    return False


def fingerprint(value):
    """Bytes that change when ``value`` changes.

    marshal takes the builtin types (the usual session values) several
    times faster than pickle; version 2 writes no back references, which
    would depend on reference counts.  Other types are pickled, ZODB
    objects as references: their own changes are the ZODB's to save.
    """
    try:
        return marshal.dumps(value, 2)
    except ValueError:
        pass
    try:
        return references.dumps(value)
    except Exception:
        return None


def expired(record, timeout):
    """Whether ``record`` was last accessed more than ``timeout`` seconds
    ago (never, without a timeout)."""
    accessed = record.get(ACCESSED)
    if not timeout or not isinstance(accessed, (int, float)):
        return False
    return time.time() - accessed > timeout


def is_marked(key):
    """Whether ``key``, stored, is a user's key that bears the mark."""
    return (type(key) is str and key[:1] == USER_KEY_MARK
            and key.lstrip(USER_KEY_MARK) in INTERNAL_KEYS)


def stored_key(key):
    """The key under which the user's ``key`` is stored."""
    if type(key) is str and key.lstrip(USER_KEY_MARK) in INTERNAL_KEYS:
        return USER_KEY_MARK + key
    return key


def refused_keys(record, dumps):
    """The keys of ``record``'s user values that ``dumps`` (a serializer)
    refuses, each tried on its own (for an error that must name them)."""
    keys = []
    for key, value in record.items():
        if key in INTERNAL_KEYS:
            continue
        try:
            dumps({key: value})
        except Exception:
            keys.append(key)
    return keys


def largest_keys(record, size, count=3):
    """The keys of ``record``'s user values that take the most room, as
    ``size(key, value)`` measures it (for an error that must name them)."""
    sizes = sorted(((size(key, value), key) for key, value in record.items()
                    if key not in INTERNAL_KEYS), reverse=True)
    return [key for _, key in sizes[:count]]


def split_record(record):
    """Separate the user's data from Beaker's bookkeeping keys: returns
    (data, creation time, access time, modification time, browser id
    only)."""
    data = dict(record)
    times = (data.pop(CREATED, None), data.pop(ACCESSED, None),
             data.pop(MODIFIED, None), bool(data.pop(ID_ONLY, False)))
    for key in BEAKER_KEYS:
        if key in data:
            del data[key]
    if any(map(is_marked, data)):
        data = {key[1:] if is_marked(key) else key: value
                for key, value in data.items()}
    return (data,) + times


@implementer(IBeakerSessionData)
class BeakerSessionData(Implicit):
    """One browser's session, as loaded for this request."""

    security = ClassSecurityInfo()
    security.setDefaultAccess('allow')
    security.declareObjectPublic()
    # What the default allows anyway, declared so that restricted code
    # finds the roles at once instead of acquiring them on every call.
    security.declarePublic(  # NOQA: D001
        'get', 'keys', 'values', 'items', 'has_key', 'set', 'delete',
        'clear', 'update', 'setdefault', 'pop', 'getId', 'getName',
        'getContainerKey', 'invalidate', 'isValid', 'getLastAccessed',
        'setLastAccessed', 'getLastModified', 'setLastModified',
        'getCreated', 'getTimeoutMinutes', '__getitem__', '__contains__',
        '__len__', '__iter__')

    def __init__(self, session_id, record=None,
                 write_granularity=WRITE_GRANULARITY, now=None, store=None,
                 timeout=None):
        if now is None:
            now = time.time()
        self._id = session_id
        self._is_new = record is None
        (self._data, created, accessed, self._last_modified,
         self._id_only) = split_record(record or {})
        self._created = now if created is None else created
        self._last_accessed = now if accessed is None else accessed
        # The data as loaded, copied before the first change (rollback).
        self._saved = None
        self._write_granularity = write_granularity
        self._invalid = False
        self._forget_changes()
        # Where commits write (the writer is made when first needed), and
        # the store's timeout in seconds.
        self._store = store
        self._timeout = timeout
        self._writer = None
        # The id the session had before a login renamed it in the current
        # transaction, and what takes back the cookie of the new one: its
        # commit deletes the old id's record, its abort undoes the rename.
        self._renamed_from = None
        self._take_back_cookie = None
        # Where the ZODB objects in its values are looked up (see
        # references.py); the manager's.
        self._zodb_connection = None

    def _forget_changes(self):
        # Keys set, in the order they were set (a dict as an ordered set).
        self._changed = {}
        self._deleted = set()
        self._cleared = False
        self._read_mutables = {}
        self._touched = False

    # -- change tracking --

    def _register(self):
        """Make sure the current transaction will write this session."""
        writer = self._the_writer()
        if writer is not None:
            writer.join()

    def _watch(self):
        """Make sure the current transaction checks the values handed out
        for changes made in place, and writes them if there are any."""
        writer = self._the_writer()
        if writer is not None:
            writer.watch()

    def _the_writer(self):
        """The transaction data manager (see datamanager.py), made when
        first needed; None without a store."""
        if self._writer is None and self._store is not None:
            # The session itself, not an acquisition wrapper of it.
            session = aq_base(self)
            session._writer = SessionWriter(session, self._store)
        return self._writer

    def _changing_data(self):
        """Keep the loaded data for a rollback, before changing it."""
        if self._saved is None:
            self._saved = dict(self._data)

    def _changing(self, key):
        # A key deleted, then set again, stays in _deleted: the commit
        # deletes it first, and sets it last, as a dict orders it.
        self._changed[key] = None
        self._read_mutables.pop(key, None)
        self._last_modified = time.time()
        self._register()

    def _handing_out(self, key, value):
        """Remember mutable values given to the caller to spot in-place
        changes at commit time."""
        if key not in self._read_mutables and key not in self._changed \
                and not is_immutable(value):
            self._read_mutables[key] = fingerprint(value)
            self._watch()
        return value

    def _mutated_keys(self):
        return [key for key, before in self._read_mutables.items()
                if key in self._data
                and fingerprint(self._data[key]) != before]

    def _collect_mutations(self):
        """Turn values changed in place into changed keys, once, at commit."""
        for key in self._mutated_keys():
            self._changed[key] = None
            del self._read_mutables[key]

    def _has_changes(self):
        return bool(self._changed or self._deleted or self._cleared
                    or self._invalid or self._mutated_keys())

    def _access(self, now):
        """The session is handed out: a new one, or one last accessed over
        the write granularity ago, is accessed ``now``, as stock's container
        records it (``getLastAccessed()`` tells at once); the commit writes
        the time."""
        if self._is_new or \
                now - self._last_accessed > self._write_granularity:
            self._last_accessed = now
            self._touch()

    def _touch(self):
        """The commit writes the session, changed or not."""
        self._touched = True
        self._register()

    def _keep(self):
        """A browser id only (``getBrowserId()``) becomes a session."""
        self._id_only = False
        self._touch()

    def _rename(self, session_id, rewrite=True, take_back_cookie=None):
        """Go on under ``session_id``, a new id at login: code holding the
        session goes on with it.  With ``rewrite``, the commit writes the
        whole session under its new id, as a new one, and deletes the
        record of the old id.

        The rename belongs to the transaction as a whole: a savepoint
        rolled back takes back the session's changes since, not the new id
        (nor the cookie, or the login, that went out with the response); an
        abort takes it back entirely, ``take_back_cookie`` included
        (``_unrename``)."""
        if rewrite and self._renamed_from is None:
            self._renamed_from = self._id
            self._take_back_cookie = take_back_cookie
            writer = self._the_writer()
            if writer is not None:
                writer.renamed(self._unrename)
        self._id = session_id
        if rewrite:
            self._is_new = True
        self._touch()

    def _unrename(self):
        """The transaction that renamed the session did not commit: back
        to the old id, with its record as stored, and the browser keeps
        its cookie."""
        if self._renamed_from is None:
            return
        self._id, self._renamed_from = self._renamed_from, None
        self._is_new = False
        self._rollback()
        take_back, self._take_back_cookie = self._take_back_cookie, None
        if take_back is not None:
            take_back()

    def _needs_write(self):
        """Whether the commit writes; values changed in place count once
        ``_collect_mutations`` made them changed keys (each check fingerprints
        every mutable value read)."""
        return (self._is_new or self._touched or self._changed
                or self._deleted or self._cleared or self._invalid)

    def _apply_to(self, record, now):
        """Return ``record`` (latest stored state) with our changes, or
        None: the session is to be deleted, or is already gone."""
        if self._invalid:
            return None
        if record is None and not self._is_new:
            # Ended since this request loaded it (invalidated or renamed at
            # a login by another request, or expired): its id must not
            # come back with this request's changes.
            return None
        if record is None or self._is_new:
            record = {CREATED: self._created}
        if self._cleared:
            record = {key: value for key, value in record.items()
                      if key in INTERNAL_KEYS}
        for key in self._deleted:
            record.pop(stored_key(key), None)
        # A new record holds every key; one renamed at login, too, after
        # a savepoint rollback restored the changes made before it.
        for key in self._data if self._is_new else self._changed:
            if key in self._data:
                record[stored_key(key)] = self._data[key]
        record[ACCESSED] = now
        if self._id_only:
            record[ID_ONLY] = True
        else:
            record.pop(ID_ONLY, None)
        if self._last_modified is not None:
            record[MODIFIED] = self._last_modified
        return record

    def _stored(self, record):
        """The transaction committed ``record``: it is our state now."""
        self._is_new = False
        self._renamed_from = self._take_back_cookie = None
        self._forget_changes()
        if record is not None:
            self._last_accessed = record[ACCESSED]
            self._data = split_record(record)[0]
            self._saved = None

    def _rollback(self):
        """The transaction aborted: back to the last stored state."""
        if self._saved is not None:
            self._data, self._saved = self._saved, None
        self._invalid = False
        self._forget_changes()

    def _snapshot(self):
        return (references.dumps(self._data),
                dict(self._changed), set(self._deleted), self._cleared,
                dict(self._read_mutables), self._invalid,
                self._last_modified)

    def _restore(self, snapshot):
        self._changing_data()
        (data, self._changed, self._deleted, self._cleared,
         self._read_mutables, self._invalid, self._last_modified) = snapshot
        with references.zodb_connection(self._zodb_connection):
            self._data = references.loads(data)
        self._changed = dict(self._changed)
        self._deleted = set(self._deleted)
        self._read_mutables = dict(self._read_mutables)

    def _get_p_changed(self):
        return self._has_changes()

    def _set_p_changed(self, value):
        # Stock code flags in-place changes this way; mark every value
        # handed out so far.
        if value:
            for key in list(self._read_mutables):
                self._changing(key)
            self._touch()

    _p_changed = property(_get_p_changed, _set_p_changed)

    # -- IItemWithId, ITransient --

    def getId(self):
        """A unique id for the session, which is not the browser id."""
        digest = sha256(self._id.encode('ascii')).hexdigest()
        return '%d%010d' % (int(self._created), int(digest[:15], 16) % 10**10)

    getName = getId

    def getContainerKey(self):
        """The browser id, under which the session is stored."""
        return self._id

    # Stock sessions' attributes (``request/SESSION/id`` in templates).
    id = property(getId)
    token = property(getContainerKey)

    def invalidate(self):
        """Forget the session: its record is deleted at commit."""
        self._invalid = True
        self._register()

    def isValid(self):
        # Stock's answers: 1, or None once invalidated.
        return None if self._invalid else 1

    def getLastAccessed(self):
        return self._last_accessed

    def setLastAccessed(self):
        """Accesses are recorded at commit, at most once per granularity."""
        self._register()

    def getLastModified(self):
        return self._last_modified

    def setLastModified(self):
        self._last_modified = time.time()
        self._touch()

    def getCreated(self):
        return self._created

    # -- IDictionaryLike, ITTWDictionary --

    def keys(self):
        return list(self._data.keys())

    def values(self):
        return [self._handing_out(key, value)
                for key, value in list(self._data.items())]

    def items(self):
        return [(key, self._handing_out(key, value))
                for key, value in list(self._data.items())]

    def get(self, key, default=None):
        value = self._data.get(key, _marker)
        if value is _marker:
            return default
        if type(value) in SIMPLE_TYPES:
            return value
        return self._handing_out(key, value)

    def __getitem__(self, key):
        value = self._data[key]
        if type(value) in SIMPLE_TYPES:
            return value
        return self._handing_out(key, value)

    def __contains__(self, key):
        return 1 if key in self._data else 0

    has_key = __contains__

    def __setitem__(self, key, value):
        self._changing_data()
        self._data[key] = value
        self._changing(key)

    set = __guarded_setitem__ = __setitem__

    def __delitem__(self, key):
        self._changing_data()
        del self._data[key]
        self._changing(key)
        del self._changed[key]
        self._deleted.add(key)

    delete = __guarded_delitem__ = __delitem__

    def clear(self):
        self._changing_data()
        self._data = {}
        self._forget_changes()
        self._cleared = True
        self._last_modified = time.time()
        self._register()

    def update(self, other=(), **kw):
        if hasattr(other, 'keys'):
            other = [(key, other[key]) for key in other.keys()]
        for key, value in list(other) + list(kw.items()):
            self[key] = value

    # -- what a dict has and a stock session lacks --

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        return iter(list(self._data))

    def __bool__(self):
        # Stock sessions are always true, even when empty.
        return True

    def setdefault(self, key, default=None):
        if key not in self._data:
            self[key] = default
        return self[key]

    def pop(self, key, default=_marker):
        if key not in self._data:
            if default is _marker:
                raise KeyError(key)
            return default
        value = self._data[key]
        del self[key]
        return value

    def __repr__(self):
        return '<%s id: %s, keys: %r>' % (
            self.__class__.__name__, self.getId(), sorted(
                self._data, key=str))

    def getTimeoutMinutes(self):
        """The session timeout in minutes, as the stock container has it."""
        return int(self._timeout / 60) if self._timeout else 0


InitializeClass(BeakerSessionData)
