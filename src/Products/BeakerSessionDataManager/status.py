"""How the session store is doing: for the ZMI Status tab and
``beaker-sessions check``.

``check_store(configuration)`` writes, reads and removes a probe record
under a fresh session id, timing the round trip, and counts the stored
sessions where the store can count them cheaply; with ``write=False`` (the
Status tab, shown by a GET) it reads a session id nobody has instead, and
writes nothing.
``last_cleanup(configuration)`` tells when ``beaker-sessions cleanup`` last
ran against the store.

Every failure is shown (a diagnostic page that fails helps nobody); one
that ``store_errors`` does not list may be a bug of ours rather than the
store's, and its traceback goes to the log as well.
"""
import logging
import secrets
import time
from functools import partial

from beaker.container import MemoryNamespaceManager

from .browserid import SESSION_ID
from .cleanup import layout_for
from .namespaces import LockTimeout
from .outages import describe
from .redisclient import Connection
from .redisclient import ReplyError
from .session import ACCESSED
from .session import CREATED
from .store import RECORD_KEY


logger = logging.getLogger('Products.BeakerSessionDataManager')

PROBE_KEY = '_beaker_sessions_probe'
# Counting Redis keys takes a SCAN over the whole database; stop there.
REDIS_COUNT_SECONDS = 1.0


class StoreStatus:
    """The outcome of ``check_store``."""

    def __init__(self, store_name):
        self.store_name = store_name
        self.ok = False
        self.error = None
        self.round_trip_ms = None
        self.session_count = None
        # Why the store did not count its sessions, if it failed to.
        self.count_error = None

    def verdict(self):
        """One line for people: 'OK: ...' or 'FAILED: ...'."""
        if not self.ok:
            return 'FAILED: %s: %s' % (self.store_name, self.error)
        line = 'OK: %s, round trip %.1f ms' % (
            self.store_name, self.round_trip_ms)
        if self.session_count is not None:
            line += ', %d stored sessions' % self.session_count
        elif self.count_error is not None:
            line += ', sessions not counted: %s' % self.count_error
        return line


class ProbeError(Exception):
    """The store accepted the probe but did not give it back right."""


def store_errors(configuration):
    """The exceptions by which the configured store says that it failed
    (its server, disk, lock or access rights), not a bug of ours: OS and
    socket errors (files, dbm, this product's Redis client, memcached),
    Redis's error replies, a lock held too long, a probe given back wrong,
    and the errors of redis-py or of SQLAlchemy and the database driver
    where the store goes through them."""
    errors = (OSError, ReplyError, LockTimeout, ProbeError)
    if configuration.type == 'ext:rediscluster':
        from redis.exceptions import RedisError
        errors += (RedisError,)
    elif configuration.type in ('ext:database', 'ext:sqla'):
        import sqlalchemy as sa
        url = sa.engine.make_url(configuration.store.namespace_args['url'])
        # The store reads and writes on the driver's connections too.
        errors += (sa.exc.SQLAlchemyError,
                   url.get_dialect().import_dbapi().Error)
    return errors


def log_unexpected(configuration, exc):
    """Log the traceback of a failure that is not one of the store's own
    (see store_errors): the page shows it either way."""
    if not isinstance(exc, store_errors(configuration)):
        logger.error('Checking the %s failed', configuration.store.name,
                     exc_info=exc)


def check_store(configuration, write=True):
    """Round-trip a probe record through the store, or with ``write``
    false only read it, and count the sessions; a StoreStatus."""
    status = probe(configuration, write)
    if status.ok:
        try:
            status.session_count = count_sessions(configuration)
        except Exception as exc:
            # The count is a nicety: the verdict stands, and says why
            # there is none (a Redis user may not SCAN, say).
            log_unexpected(configuration, exc)
            status.count_error = describe(exc)
    return status


def probe(configuration, write):
    """``check_store`` without the count; a StoreStatus."""
    store = configuration.store
    status = StoreStatus(store.name)
    session_id = secrets.token_hex(16)
    started = time.perf_counter()
    try:
        if write:
            write_probe(store, session_id)
        else:
            read_probe(configuration, session_id)
    except Exception as exc:
        log_unexpected(configuration, exc)
        status.error = '%s: %s' % (type(exc).__name__, exc)
        return status
    status.round_trip_ms = (time.perf_counter() - started) * 1000
    status.ok = True
    return status


def write_probe(store, session_id):
    """Write a probe record under ``session_id``, read it back and remove
    it, leaving nothing behind."""
    token = secrets.token_hex(8)
    now = time.time()
    store.merge(session_id, lambda record: {
        CREATED: now, ACCESSED: now, PROBE_KEY: token})
    found = store.load(session_id)
    if not found or found.get(PROBE_KEY) != token:
        raise ProbeError('the probe record read back as %r' % (found,))
    store.delete(session_id)
    if store.load(session_id) is not None:
        raise ProbeError('the probe record is still there after '
                         'deleting it')
    if store.removable:
        # Leave no empty file or row behind.
        store.remove_if(session_id, lambda record, written: True)


def read_probe(configuration, session_id):
    """Read the session ``session_id``, which nobody has, writing nothing:
    what a request of a browser with an unknown id does.  Beaker's dbm
    namespace makes the file of any id it opens, and its memory namespace
    an entry: for dbm the probe reads the store's directory instead; the
    memory store, in this process, needs none."""
    if configuration.type == 'memory':
        return
    if configuration.type == 'dbm':
        layout_for(configuration).count()
        return
    found = configuration.store.load(session_id)
    if found is not None:
        raise ProbeError('a session id nobody has read as %r' % (found,))


def count_sessions(configuration):
    """How many sessions the store holds (expired ones not yet cleaned up
    included), or None where counting is not cheap (memcached)."""
    layout = layout_for(configuration)
    if layout is not None:
        return layout.count()
    if configuration.type == 'memory':
        # Only this process's sessions, which are the ones it serves.
        namespaces = MemoryNamespaceManager.namespaces.dict
        return sum(1 for name, data in list(namespaces.items())
                   if SESSION_ID(name) and RECORD_KEY in data)
    store = configuration.store
    if configuration.type == 'ext:redis':
        # A connection of its own, with the store's timeouts: not one of
        # the sessions' connections, which a SCAN would hold up.
        connection = Connection(store.client.settings)
        try:
            return count_redis_keys([partial(scan, connection)])
        finally:
            connection.close()
    if configuration.type == 'ext:rediscluster':
        # Each primary holds its share of the keys.
        cluster = store.cluster()
        return count_redis_keys([
            partial(cluster.get_redis_connection(node).scan, count=1000)
            for node in cluster.get_primaries()])
    return None


def scan(connection, cursor, match):
    """redis-py's ``scan`` on a connection of the product's client."""
    cursor, keys = connection.execute(
        'SCAN', cursor, 'MATCH', match, 'COUNT', 1000)
    return int(cursor), keys


def count_redis_keys(scans):
    """Count Beaker's session keys with ``scans``, one ``SCAN`` function
    (as redis-py's) per server, within REDIS_COUNT_SECONDS in all."""
    deadline = time.monotonic() + REDIS_COUNT_SECONDS
    count = 0
    for scan_server in scans:
        cursor = 0
        while True:
            cursor, keys = scan_server(
                cursor, match='beaker_cache:*:%s' % RECORD_KEY)
            count += len(keys)
            if not cursor:
                break
            if time.monotonic() > deadline:
                return None
    return count


def last_cleanup(configuration):
    """When ``beaker-sessions cleanup`` last ran on this store (seconds
    since the epoch), or None if never or not applicable.  An SQL store
    that cannot be read raises its error: the time is unknown, not
    never."""
    layout = layout_for(configuration)
    if layout is None:
        return None
    return layout.last_cleanup()
