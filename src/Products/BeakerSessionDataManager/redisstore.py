"""Session records in Redis, read and written by redis-py directly.

Same keys and values as ``BeakerStore`` over Beaker's
``RedisNamespaceManager`` (``beaker_cache:<session id>:session`` holding the
pickled record string), so Beaker's own sessions and middleware can share
the database, but with the fewest round trips:

- ``load``: one ``GET``;
- ``merge``: one ``EVALSHA`` of a compare-and-set script that writes the
  new record only if the stored one is still the one the changes were
  applied to, and otherwise answers the stored record, to which they are
  applied again.  ``load`` remembers (per thread) what it read, so a
  request that read its session and writes it back makes one round trip
  for the write; no lock is taken or released.  Without such a read (a new
  session) the merge reads first: two round trips.

The connections come from one pool per URL shared by all stores of the
process; a thread keeps the connection it took until it ends, which spares
the pool's check-out (as costly as a ``GET``) on every request.
"""
import pickle
import threading
from hashlib import sha1

import redis

from ZODB.POSException import ConflictError

from .store import RECORD_KEY
from .store import BeakerStore


# RedisNamespaceManager's key of a namespace's RECORD_KEY.
KEY = 'beaker_cache:%s:' + RECORD_KEY
# KEYS[1]: the record; ARGV: the expected value ('' for none), the new
# value ('' to delete), the time to live in seconds ('' for none).
COMPARE_AND_SET = '''\
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
    return {0, current}
end
if ARGV[2] == '' then
    redis.call('DEL', KEYS[1])
elseif ARGV[3] == '' then
    redis.call('SET', KEYS[1], ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return {1}
'''
COMPARE_AND_SET_SHA = sha1(COMPARE_AND_SET.encode('ascii')).hexdigest()
# Give up (ConflictError: Zope retries the request) after this many
# writers came first in a row.
MAX_ATTEMPTS = 50
# Remembered last reads per thread, in case a request loads many sessions.
MAX_REMEMBERED = 16
# Unless the URL says otherwise: a store that hangs fails the request
# instead of holding its thread forever.
CONNECTION_DEFAULTS = {'socket_timeout': 10, 'socket_connect_timeout': 5}

_pools = {}
_pools_lock = threading.Lock()


def shared_pool(url):
    """The connection pool of ``url``, made once per process."""
    with _pools_lock:
        pool = _pools.get(url)
        if pool is None:
            pool = _pools[url] = redis.ConnectionPool.from_url(
                url, **CONNECTION_DEFAULTS)
        return pool


class Lease:
    """A connection a thread has taken from the pool, returned when the
    thread (and with it its thread-local data) ends."""

    def __init__(self, pool):
        self.pool = pool
        try:
            self.connection = pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command name
            self.connection = pool.get_connection('GET')

    def __del__(self):
        try:
            self.pool.release(self.connection)
        except Exception:
            pass  # The interpreter is shutting down.


class RedisStore(BeakerStore):
    """Beaker's Redis records, one round trip per read or write."""

    def __init__(self, namespace_class, namespace_args, **kw):
        super().__init__(namespace_class, namespace_args, **kw)
        self.url = self.namespace_args['url']
        if not isinstance(self.url, str):
            raise TypeError('session.url: a redis:// URL, not %r'
                            % (self.url,))
        self.pool = shared_pool(self.url)
        self._local = threading.local()

    # -- ISessionStore --

    def load(self, session_id):
        """See ISessionStore."""
        raw = self._execute('GET', KEY % session_id)
        self._remember(session_id, raw)
        return self._record(raw)

    def merge(self, session_id, apply):
        """See ISessionStore: a compare-and-set, retried while other
        writers come first."""
        key = KEY % session_id
        # The stored value as this thread read it last, in this request's
        # load as a rule; the compare-and-set tells if it changed since.
        remembered = self._remembered()
        if session_id in remembered:
            expected = remembered.pop(session_id)
        else:
            expected = self._execute('GET', key)
        ttl = int(self.ttl) if self.ttl else ''
        for _ in range(MAX_ATTEMPTS):
            record = apply(self._record(expected))
            value = b'' if record is None else pickle.dumps(
                self.encode(record))
            reply = self._compare_and_set(key, expected or b'', value, ttl)
            if reply[0] == 1:
                self._remember(session_id, value or None)
                return record
            expected = reply[1] if len(reply) > 1 else None
        raise ConflictError(
            'session %s... was written by %d other requests while this one '
            'tried to write it' % (session_id[:8], MAX_ATTEMPTS))

    def delete(self, session_id):
        """See ISessionStore."""
        self._remembered().pop(session_id, None)
        self._execute('DEL', KEY % session_id)

    # -- helpers --

    def _record(self, raw):
        if raw is None:
            return None
        try:
            encoded = pickle.loads(raw)
        except Exception:
            return None  # Unreadable: no session, as Beaker's.
        return self._live(self._decoded(encoded))

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

    def _compare_and_set(self, key, *args):
        try:
            return self._execute(
                'EVALSHA', COMPARE_AND_SET_SHA, 1, key, *args)
        except redis.exceptions.NoScriptError:
            # A new or flushed server: load the script once.
            self._execute('SCRIPT', 'LOAD', COMPARE_AND_SET)
            return self._execute(
                'EVALSHA', COMPARE_AND_SET_SHA, 1, key, *args)

    def _connection(self):
        try:
            return self._local.lease.connection
        except AttributeError:
            self._local.lease = Lease(self.pool)
            return self._local.lease.connection

    def _execute(self, *command):
        """Send one command; its reply.

        A connection the server closed (a restart) is found out on its
        next use: that command is sent once more on a new connection.
        Repeating it is harmless: a read, or a compare-and-set whose
        first copy, had it run, makes the second one fail and answer the
        stored record, to which the changes are applied again.
        """
        for retry in (False, True):
            connection = self._connection()
            try:
                connection.send_packed_command(
                    connection.pack_command(*command), check_health=False)
                return connection.read_response()
            except redis.exceptions.ResponseError:
                raise  # The server answered: the connection is fine.
            except BaseException as exc:
                # Whatever was sent or half read is lost with it.
                connection.disconnect()
                if retry or not isinstance(
                        exc, redis.exceptions.ConnectionError):
                    raise
