"""How the session store is doing: for the ZMI Status tab and
``beaker-sessions check``.

``check_store(configuration)`` writes, reads and removes a probe record
under a fresh session id, timing the round trip, and counts the stored
sessions where the store can count them cheaply.
``last_cleanup(configuration)`` tells when ``beaker-sessions cleanup`` last
ran against the store.
"""
import secrets
import time
from functools import partial

from beaker.container import MemoryNamespaceManager

from .browserid import SESSION_ID
from .cleanup import layout_for
from .redisclient import Connection
from .session import ACCESSED
from .session import CREATED
from .store import RECORD_KEY


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

    def verdict(self):
        """One line for people: 'OK: ...' or 'FAILED: ...'."""
        if not self.ok:
            return 'FAILED: %s: %s' % (self.store_name, self.error)
        line = 'OK: %s, round trip %.1f ms' % (
            self.store_name, self.round_trip_ms)
        if self.session_count is not None:
            line += ', %d stored sessions' % self.session_count
        return line


class ProbeError(Exception):
    """The store accepted the probe but did not give it back right."""


def check_store(configuration):
    """Round-trip a probe record through the store; a StoreStatus."""
    store = configuration.store
    status = StoreStatus(store.name)
    session_id = secrets.token_hex(16)
    token = secrets.token_hex(8)
    started = time.perf_counter()
    try:
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
    except Exception as exc:
        status.error = '%s: %s' % (type(exc).__name__, exc)
        return status
    status.round_trip_ms = (time.perf_counter() - started) * 1000
    status.ok = True
    try:
        status.session_count = count_sessions(configuration)
    except Exception:
        pass  # the count is a nicety; the verdict stands
    return status


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
    since the epoch), or None if never or not applicable."""
    layout = layout_for(configuration)
    if layout is None:
        return None
    try:
        return layout.last_cleanup()
    except Exception:
        return None
