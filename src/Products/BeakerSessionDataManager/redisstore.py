"""Session records in Redis, with the fewest round trips.

Same keys and values as ``BeakerStore`` over Beaker's
``RedisNamespaceManager`` (``beaker_cache:<session id>:session`` holding the
pickled record string), so Beaker's own sessions and middleware can share
the database, but:

- ``load`` answers from the process's cache of the records its connections
  have read or written, which Redis keeps coherent (``redisclient``): no
  round trip for a session this Zope has seen, one ``GET`` otherwise;
- ``merge`` is one ``EVALSHA`` of a compare-and-set script that writes the
  new record only if the stored one is still the one the changes were
  applied to, and otherwise answers the stored record, to which they are
  applied again.  No lock is taken or released.  When other processes
  cache records (the script looks in ``redisclient.CACHES_KEY``), a
  ``PING`` follows the write: their caches have heard of it before the
  browser has.  A delete is always followed by one.

``RedisClusterStore`` (``ext:rediscluster``) keeps the records of Beaker's
``RedisClusterNamespaceManager`` the same way, through redis-py's cluster
client, without a client cache: a read is one ``GET``, a write the
compare-and-set, on the node of the key.  Beaker's lock, which a process
killed while holding it left in place for 15 minutes, is not used.
"""
import pickle
import threading
from hashlib import sha1

from .interfaces import ConfigurationError
from .redisclient import CACHES_KEY
from .redisclient import DEFAULT_CONNECT_TIMEOUT
from .redisclient import DEFAULT_SOCKET_TIMEOUT
from .redisclient import MISSING
from .redisclient import UNNAMED_CACHE
from .redisclient import Client
from .redisclient import NoScriptError
from .store import MAX_ATTEMPTS
from .store import RECORD_KEY
from .store import CompareAndSetStore
from .store import plain_loads


# RedisNamespaceManager's key of a namespace's RECORD_KEY.
KEY = 'beaker_cache:%s:' + RECORD_KEY
# KEYS[1]: the record; ARGV: the expected value ('' for none), the new
# value ('' to delete), the time to live in seconds ('' for none).  The
# write ends the connection's tracking of the key; reading it again keeps
# the cached value under Redis's watch.
WRITE_IF_UNCHANGED = '''\
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
redis.call('EXISTS', KEYS[1])
'''
# Then, ARGV: the writer's own cache channel, the registry of caches.  A
# write answers {1, 1} if another process caches (a channel of the
# registry has a subscriber, or the registry has a cache without a
# channel), or if the registry cannot be read: the writer then waits for
# the notices.  Channels without a subscriber are of caches gone: dropped,
# and then the third value is 1: the connection's own write ended Redis's
# notices to it of changes of the registry (read in a script, a key that
# is not declared is not tracked), so its cache checks the registry.
# The search stops at the first cache of another process; one channel
# drawn at random is then looked at too, so that those of caches gone
# after it do not pile up.  The registry is no declared key, so that a
# user whose access list refuses it can still write (and always waits).
COMPARE_AND_SET = WRITE_IF_UNCHANGED + '''\
local dropped = 0
local function gone(channel)
    local counts = redis.pcall('PUBSUB', 'NUMSUB', channel)
    if counts.err or counts[2] > 0 then
        return false
    end
    redis.pcall('SREM', ARGV[5], channel)
    dropped = 1
    return true
end
local channels = redis.pcall('SMEMBERS', ARGV[5])
if channels.err then
    return {1, 1}
end
for _, channel in ipairs(channels) do
    if channel == '%(unnamed)s' then
        return {1, 1, dropped}
    end
    if channel ~= ARGV[4] and not gone(channel) then
        local drawn = redis.pcall('SRANDMEMBER', ARGV[5])
        if type(drawn) == 'string' and drawn ~= '%(unnamed)s' then
            gone(drawn)
        end
        return {1, 1, dropped}
    end
end
return {1, 0, dropped}
''' % {'unnamed': UNNAMED_CACHE}
# A cluster has no client caches to tell, and no registry.
CLUSTER_COMPARE_AND_SET = WRITE_IF_UNCHANGED + 'return {1}\n'
COMPARE_AND_SET_SHA = sha1(COMPARE_AND_SET.encode('ascii')).hexdigest()
# Records a process keeps (session.client_cache_size).
DEFAULT_CACHE_SIZE = 10000

_clients = {}
_clients_lock = threading.Lock()


def shared_client(url, cache_size):
    """The client of ``url``, made once per process."""
    with _clients_lock:
        client = _clients.get((url, cache_size))
        if client is None:
            client = _clients[url, cache_size] = Client(url, cache_size)
        return client


class RedisRecords(CompareAndSetStore):
    """The pickled record strings of Beaker's Redis namespaces."""

    def _record(self, raw):
        if raw is None:
            return None
        try:
            encoded = plain_loads(raw)
        except Exception:
            return None  # Unreadable: no session, as Beaker's.
        return self._live_record(encoded)

    def _merge(self, session_id, apply, expected, write):
        """Apply the changes to ``expected``, the stored value as this
        thread last read it, and store them with ``write(expected, value,
        ttl)``, a compare-and-set answering (written, the stored value
        now); while other writers come first, again on theirs."""
        ttl = int(self.ttl) if self.ttl else ''
        for _ in range(MAX_ATTEMPTS):
            record = apply(self._record(expected))
            value = b'' if record is None else pickle.dumps(
                self.encode(record))
            written, expected = write(expected or b'', value, ttl)
            if written:
                self._remember(session_id, expected)
                return record
        raise self._too_many_writers(session_id)

    @staticmethod
    def _outcome(reply, value):
        """(written, the stored value now) from the script's reply to a
        write of ``value``."""
        if reply[0] == 1:
            return True, value or None
        return False, reply[1] if len(reply) > 1 else None


class RedisStore(RedisRecords):
    """Beaker's Redis records: reads from a coherent cache, a write in one
    round trip (two where other processes cache)."""

    def __init__(self, namespace_class, namespace_args,
                 client_cache_size=DEFAULT_CACHE_SIZE, **kw):
        super().__init__(namespace_class, namespace_args, **kw)
        self.url = self.namespace_args['url']
        if not isinstance(self.url, str):
            raise ConfigurationError('session.url: a redis:// URL, not %r'
                                     % (self.url,))
        try:
            self.client = shared_client(self.url, client_cache_size)
        except ValueError as exc:
            raise ConfigurationError('session.url: %s' % exc)

    # -- ISessionStore --

    def load(self, session_id):
        """See ISessionStore."""
        key = KEY % session_id
        slot = self.client.slot(key)
        with slot.lock:
            raw = slot.cached(key)
            if raw is MISSING:
                raw = slot.run('GET', key)
                slot.keep(key, raw)
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
            # The cache's, or a guess that there is none (a new session):
            # a wrong guess costs one more compare-and-set, as a GET would.
            expected = self._cached(key)
        slot = self.client.slot(key)

        def write(expected, value, ttl):
            with slot.lock:
                reply = self._compare_and_set(
                    slot, key, expected, value, ttl, self.client.channel)
                written, stored = self._outcome(reply, value)
                # Both ways the script read the key last: tracked.
                slot.keep(key, stored)
                if written and reply[1]:
                    slot.sync()  # Other processes cache.
                if written and reply[2:] == [1]:
                    slot.registry_changed = True
            return written, stored

        return self._merge(session_id, apply, expected, write)

    def delete(self, session_id):
        """See ISessionStore."""
        self._remembered().pop(session_id, None)
        key = KEY % session_id
        slot = self.client.slot(key)
        with slot.lock:
            slot.run('DEL', key)
            slot.forget(key)
            slot.sync()

    # -- helpers --

    def _cached(self, key):
        """The cache's value of ``key``, or None."""
        slot = self.client.slot(key)
        with slot.lock:
            raw = slot.cached(key)
        return None if raw is MISSING else raw

    @staticmethod
    def _compare_and_set(slot, key, *args):
        """Repeating the script after a lost connection is harmless: had
        its first copy run, the second one fails and answers the stored
        record, to which the changes are applied again."""
        command = ('EVALSHA', COMPARE_AND_SET_SHA, 1, key) + args + (
            CACHES_KEY,)
        try:
            return slot.run(*command)
        except NoScriptError:
            # A new or flushed server: load the script once.
            slot.run('SCRIPT', 'LOAD', COMPARE_AND_SET)
            return slot.run(*command)


def cluster_options(namespace_args):
    """The connection options among ``namespace_args``, zope.conf's strings
    read as redis-py reads them in a URL's query (``socket_timeout 5``)."""
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS
    options = {}
    for name, value in namespace_args.items():
        if name in ('urls', 'timeout'):
            continue
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parser is not None and isinstance(value, str):
            try:
                value = parser(value)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(
                    'session.%s: invalid value %r (%s)' % (name, value, exc))
        options[name] = value
    return options


def cluster_client(urls, connection_options):
    """redis-py's cluster client of ``urls`` (``session.url``): its nodes,
    the first URL's credentials and parameters, ``connection_options``
    (see cluster_options), and where none says otherwise the timeouts of
    ``ext:redis``.  A
    command is sent once more after a lost connection or a timeout, on
    the cluster's slots asked again: a node that stopped answering holds a
    request up for twice ``socket_timeout`` (redis-py's own defaults held
    it for two minutes)."""
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode
    from redis.cluster import RedisCluster
    from redis.connection import parse_url
    from redis.retry import Retry
    first, *others = [url.strip() for url in urls.split(',')]
    options = {'socket_timeout': DEFAULT_SOCKET_TIMEOUT,
               'socket_connect_timeout': DEFAULT_CONNECT_TIMEOUT,
               'retry': Retry(NoBackoff(), 1)}
    options.update(connection_options)
    nodes = []
    for url in others:
        parsed = parse_url(url)
        nodes.append(ClusterNode(parsed['host'], parsed.get('port', 6379)))
    return RedisCluster(url=first, startup_nodes=nodes, **options)


class RedisClusterStore(RedisRecords):
    """Beaker's Redis Cluster records: a read in one round trip, a write
    in one, with no lock."""

    def __init__(self, namespace_class, namespace_args, **kw):
        super().__init__(namespace_class, namespace_args, **kw)
        # Read at start-up: a wrong value stops Zope.
        self._connection_options = cluster_options(self.namespace_args)
        self._cluster = None
        self._cluster_lock = threading.Lock()
        self._write_if_unchanged = None  # The script, with the client.

    def cluster(self):
        """redis-py's cluster client, made at the first read or write (it
        asks the nodes for their slots), not at start-up."""
        if self._cluster is None:
            with self._cluster_lock:
                if self._cluster is None:
                    client = cluster_client(self.namespace_args['urls'],
                                            self._connection_options)
                    self._write_if_unchanged = client.register_script(
                        CLUSTER_COMPARE_AND_SET)
                    self._cluster = client
        return self._cluster

    # -- ISessionStore --

    def load(self, session_id):
        """See ISessionStore."""
        raw = self.cluster().get(KEY % session_id)
        self._remember(session_id, raw)
        return self._record(raw)

    def merge(self, session_id, apply):
        """See ISessionStore: a compare-and-set, retried while other
        writers come first (redis-py sends the script again to a node that
        lost it)."""
        self.cluster()
        key = KEY % session_id

        def write(expected, value, ttl):
            return self._outcome(self._write_if_unchanged(
                keys=[key], args=[expected, value, ttl]), value)

        # What this thread read last, in this request's load as a rule;
        # else a guess that there is none (a new session).
        return self._merge(session_id, apply,
                           self._remembered().pop(session_id, None), write)

    def delete(self, session_id):
        """See ISessionStore."""
        self._remembered().pop(session_id, None)
        self.cluster().delete(KEY % session_id)
