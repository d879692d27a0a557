"""Session records in memcached, written with memcached's compare-and-set.

Same keys and values as ``BeakerStore`` over Beaker's memcached namespace
(Beaker's own sessions can share the servers), but without a lock: a merge
under a lock took five round trips (``add`` the lock, ``get``, ``set``,
``get`` and ``delete`` the lock).  Here ``load`` is one ``gets``, which
also tells the item's version, and ``merge`` one ``cas``, which stores the
new record only if the item is still at that version (``add`` for a
session that had none) and otherwise fails: the request's changes are then
applied to the item read again.
"""
import time
from hashlib import sha1

import memcache
from beaker.ext.memcached import MAX_KEY_LENGTH

from .interfaces import SessionTooLargeError
from .session import largest_keys
from .store import MAX_ATTEMPTS
from .store import RECORD_KEY
from .store import CompareAndSetStore
from .store import PlainUnpickler


# python-memcached keeps the version of every item a thread read; forget
# them past this many.
MAX_VERSIONS = 1000
# memcached reads an expiry above 30 days as a Unix timestamp.
MAX_RELATIVE_EXPIRY = 30 * 24 * 3600


def memcached_expiry(seconds):
    """The ``time`` argument memcached reads as ``seconds`` from now."""
    if not seconds:
        return 0
    if seconds > MAX_RELATIVE_EXPIRY:
        return int(time.time() + seconds)
    return int(seconds)


class MemcachedStore(CompareAndSetStore):
    """Beaker's memcached records; one round trip per read and per write."""

    def __init__(self, namespace_class, namespace_args, **kw):
        super().__init__(namespace_class, namespace_args, **kw)
        # python-memcached's client is thread-local: each thread has its
        # own sockets and the versions of the items it read, which this
        # store's own reads must not share with another store's.  It
        # unpickles an item whose flags say so: plain data only.
        self.client = memcache.Client(
            self.namespace_args['url'].split(';'), cache_cas=True,
            unpickler=PlainUnpickler)

    @staticmethod
    def key(session_id):
        """Beaker's key of the session's record, as its memcached
        namespace's ``_format_key`` makes it."""
        key = ('%s_%s' % (session_id, RECORD_KEY)).replace(' ', '\302\267')
        if len(key) > MAX_KEY_LENGTH:
            key = sha1(key.encode('utf-8')).hexdigest()
        return key

    # -- ISessionStore --

    def load(self, session_id):
        """See ISessionStore."""
        key = self.key(session_id)
        versions = self.client.cas_ids
        if len(versions) > MAX_VERSIONS:
            self.client.reset_cas()
        raw = self._gets(key)
        self._remember(session_id, raw)
        return self._live_record(raw)

    def merge(self, session_id, apply):
        """See ISessionStore: a compare-and-set, retried while other
        writers come first."""
        key = self.key(session_id)
        # What this thread read last, with its version, in this request's
        # load as a rule; else a guess that there is none (a new session):
        # a wrong guess costs one more round trip, as a read would.
        remembered = self._remembered()
        guessed = session_id not in remembered
        expected = remembered.pop(session_id, None)
        ttl = memcached_expiry(self.ttl)
        for _ in range(MAX_ATTEMPTS):
            record = apply(self._live_record(expected))
            if record is None:
                if guessed:
                    # memcached cannot delete on condition: decide on
                    # the stored record, not on a guess.
                    guessed = False
                    expected = self._gets(key)
                    continue
                self._delete(key)
                return None
            raw = self.encode(record)
            if len(raw) > self.client.server_max_value_length:
                raise self._too_large(record, raw)
            if expected is None:
                stored = self._call('add', key, raw, time=ttl)
            elif self._version_known(key):
                stored = self._call('cas', key, raw, time=ttl)
            else:
                # python-memcached would turn the cas into a plain set.
                stored = False
            if stored:
                return record
            # Another writer came first; or no server answered (the read
            # finds that out), or the item was too large, which
            # python-memcached reports alike.
            guessed = False
            current = self._gets(key)
            if current == expected and (expected is None
                                        or self._version_known(key)):
                raise ConnectionError(
                    'memcached did not store the session: its server is '
                    'down, or the session is larger than the item size '
                    'limit')
            expected = current
        raise self._too_many_writers(session_id)

    def _too_large(self, record, raw):
        """A session python-memcached would not send: a bug to fix (500),
        not an outage (503), which its silent refusal looked like."""
        largest = largest_keys(
            record, lambda key, value: len(self._dumps({key: value})))
        return SessionTooLargeError(
            'The session does not fit in memcached: %d bytes, items hold '
            'at most %d (memcached -I, python-memcached\'s '
            'SERVER_MAX_VALUE_LENGTH). Store less in the session (the '
            'largest values: %s), or use another session.type.'
            % (len(raw), self.client.server_max_value_length,
               ', '.join(map(repr, largest))))

    def delete(self, session_id):
        """See ISessionStore."""
        self._remembered().pop(session_id, None)
        self._delete(self.key(session_id))

    # -- helpers --

    def _call(self, method, *args, **kw):
        """The client's ``method``, sent once more on a new connection if
        the server closed this thread's meanwhile.

        A restarted memcached closes the connection each thread keeps to
        it.  python-memcached finds that out at the thread's next command,
        marks the server dead for 30 seconds and, though it means to try
        once more on a new connection, does not (the server is dead): each
        thread would fail for 30 seconds after a restart of a second.  A
        server that is down fails the second attempt too (connection
        refused), and stays marked dead.
        """
        client = self.client
        connected = [server for server in client.servers if server.socket]
        result = getattr(client, method)(*args, **kw)
        if not result and connected:
            broken = [server for server in connected
                      if server.socket is None and server.deaduntil]
            if broken:
                for server in broken:
                    server.deaduntil = 0
                result = getattr(client, method)(*args, **kw)
        return result

    def _gets(self, key):
        raw = self._call('gets', key)
        if raw is None:
            self._check_server(key)
        return raw

    def _delete(self, key):
        """Delete the item; python-memcached answers a server it cannot
        reach as it answers a missing item: the server is checked, lest
        an invalidated session silently stay."""
        if not self._call('delete', key):
            self._check_server(key)

    def _version_known(self, key):
        """Whether this thread's client has the version of the item it
        read last (another session's load may have dropped them all)."""
        client = self.client
        return client._encode_key(key) in client.cas_ids

    def _check_server(self, key):
        """python-memcached answers a read from, or a write to, a server it
        cannot reach as if the item were missing, and then leaves the
        server alone for 30 seconds; its private ``_get_server`` says
        whether a server is there for the key.

        For a key whose server is down it tries ten others drawn from the
        pool, and can draw the dead one every time (about one key in a
        thousand with two servers): a missing item then, as for the other
        keys of that server, unless no server of the pool answers.
        """
        client = self.client
        if client._get_server(client._encode_key(key))[0] is None and \
                not any(server.connect() for server in client.servers):
            raise ConnectionError(
                'no memcached server answers (python-memcached tries a '
                'server that failed again after 30 seconds)')
