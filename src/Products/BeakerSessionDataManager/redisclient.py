"""A small Redis client for the session hot path, with a local cache that
Redis itself keeps coherent (client-side caching, ``CLIENT TRACKING``).

Why not redis-py here: a request that only reads its session should not
wait for Redis at all, and one that writes should wait once.  That needs
to know which connection read which key.  Each key always goes through
the same connection of a small set (chosen by its hash); the connections
speak RESP3 with ``CLIENT TRACKING on NOLOOP``, so Redis sends a
connection a notice, in band, when anybody else changes a key it has read,
and none about its own writes.  Before answering from the cache, a read
takes in the notices already on its socket (a poll, no round trip).  A
writer waits, with one more round trip (``Slot.sync``), until Redis has
sent out the notices of its write: a browser that has just written its
session through another Zope instance, and waited for the response, is
seen by its next request here.  It waits only if another process caches:
each cache enters itself in a registry (``CACHES_KEY``) before it takes
in anything, and the writer's script looks there.  Redis tells the cache
when the registry changes: found missing (deleted, evicted), the cache
enters itself again and starts afresh.

A server without RESP3 or tracking (Redis before 6, some proxies) gets
the same commands, without the cache.
"""
import ctypes
import itertools
import os
import secrets
import select
import socket
import ssl
import struct
import threading
import weakref
from urllib.parse import parse_qs
from urllib.parse import unquote
from urllib.parse import urlsplit


# Connections per server; a key always uses the same one.
SLOTS = 8
DEFAULT_SOCKET_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
SSL_CERT_REQS = {'none': ssl.CERT_NONE, 'optional': ssl.CERT_OPTIONAL,
                 'required': ssl.CERT_REQUIRED}
URL_OPTIONS = ('db', 'socket_timeout', 'socket_connect_timeout',
               'ssl_cert_reqs', 'ssl_ca_certs', 'ssl_check_hostname')
MISSING = object()
# The registry of the caches of a database: a set of channel names.  Each
# cache subscribes its connections to a channel of its own, so the channel
# has a subscriber as long as the cache can hear of changes; writers look
# for other caches there, and drop the names of those gone.  (Beaker's
# prefix, which access lists for sessions let through; a single colon:
# never a key of Beaker's.)
CACHES_KEY = 'beaker_cache:client_caches'
CACHE_CHANNEL = 'beaker_cache:client_cache:%s.%d'
# The registry's entry for a cache whose user may not subscribe (Redis 7
# gives new users of its access lists no channels): writers always wait.
UNNAMED_CACHE = '*'
# ``send`` without waiting or SIGPIPE.
SEND_FLAGS = socket.MSG_DONTWAIT | getattr(socket, 'MSG_NOSIGNAL', 0)


class PollFd(ctypes.Structure):
    _fields_ = [('fd', ctypes.c_int), ('events', ctypes.c_short),
                ('revents', ctypes.c_short)]


def _c_library_calls():
    """The C library's ``poll`` and ``send``, called holding the GIL, or
    (None, None) where ctypes cannot load them.

    Python's own socket and ``select`` calls let go of the GIL around every
    system call, even one that returns at once.  Under load another thread
    then takes it and this one waits its turn: two context switches for a
    ``poll`` that finds nothing.  (HTTP benchmark, read workload, 4
    waitress threads, one run each: a cached read added 0.11 ms of Zope
    CPU to a request with Python's ``poll``, 0.07 ms with this one, 0.05 ms
    with none at all.)
    Calls that cannot block need not let go.
    """
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        poll, send = libc.poll, libc.send
    except (OSError, AttributeError, TypeError):
        return None, None
    poll.argtypes = [ctypes.POINTER(PollFd), ctypes.c_ulong, ctypes.c_int]
    poll.restype = ctypes.c_int
    send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t,
                     ctypes.c_int]
    send.restype = ctypes.c_ssize_t
    return poll, send


_c_poll, _c_send = _c_library_calls()
# Every slot of the process, to let a forked child forget their sockets.
_slots = weakref.WeakSet()
# Names this process's caches apart from another's (a forked child's too).
_process_token = secrets.token_hex(8)
_client_serials = itertools.count(1)


class ReplyError(Exception):
    """Redis answered with an error: the connection itself is fine."""


class NoScriptError(ReplyError):
    """EVALSHA of a script the server does not have (yet)."""


class ProtocolError(ConnectionError):
    """Redis sent something this client does not understand."""


def parse_url(url):
    """The connection settings of a ``redis://``, ``rediss://`` or
    ``unix://`` URL; ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ('redis', 'rediss', 'unix'):
        raise ValueError('%r: not a redis://, rediss:// or unix:// URL'
                         % (url,))
    query = {name: values[-1]
             for name, values in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(URL_OPTIONS))
    if unknown:
        raise ValueError('unknown URL parameter %s; known: %s'
                         % (', '.join(unknown), ', '.join(URL_OPTIONS)))
    settings = {
        'username': unquote(parts.username) if parts.username else None,
        'password': unquote(parts.password) if parts.password else None,
        'ssl': parts.scheme == 'rediss',
        'socket_timeout': float(query.get(
            'socket_timeout', DEFAULT_SOCKET_TIMEOUT)),
        'connect_timeout': float(query.get(
            'socket_connect_timeout', DEFAULT_CONNECT_TIMEOUT)),
        'ssl_cert_reqs': SSL_CERT_REQS[query.get(
            'ssl_cert_reqs', 'required').lower()],
        'ssl_ca_certs': query.get('ssl_ca_certs'),
        'ssl_check_hostname': query.get(
            'ssl_check_hostname', 'true').lower() in ('true', '1', 'yes'),
    }
    if parts.scheme == 'unix':
        settings['path'] = unquote(parts.path)
        settings['db'] = int(query.get('db', 0))
    else:
        settings['host'] = parts.hostname or '127.0.0.1'
        settings['port'] = parts.port or 6379
        path = parts.path.strip('/')
        settings['db'] = int(query.get('db', path or 0))
    return settings


def pack(args):
    """A command as RESP: an array of bulk strings."""
    out = [b'*%d\r\n' % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b'%d' % arg
        out.append(b'$%d\r\n%s\r\n' % (len(arg), arg))
    return b''.join(out)


class Push(list):
    """An out-of-band message (RESP3 ``>``), such as an invalidation."""


class Connection:
    """One socket to Redis: commands and their replies, one at a time."""

    def __init__(self, settings, on_invalidate=None, channel=None):
        self.settings = settings
        self.on_invalidate = on_invalidate
        # The cache's channel (see CACHES_KEY), if it caches.
        self.channel = channel
        # Whether the server can track keys (for anybody's cache), and
        # whether it tracks this connection's.
        self.resp3 = False
        self.tracking = False
        # What the connection entered in the registry.
        self.entry = None
        self.buffer = b''
        self.sock = self._connect()
        self.tls = isinstance(self.sock, ssl.SSLSocket)
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN)
        # For the calls that keep the GIL (not through TLS).
        self.fd = self.pollfd = None
        if not self.tls and _c_poll is not None:
            self.fd = self.sock.fileno()
            self.pollfd = ctypes.byref(PollFd(self.fd, select.POLLIN, 0))
        try:
            self._handshake()
        except BaseException:
            self.close()
            raise

    def _connect(self):
        settings = self.settings
        if 'path' in settings:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(settings['connect_timeout'])
            try:
                sock.connect(settings['path'])
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(
                (settings['host'], settings['port']),
                timeout=settings['connect_timeout'])
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if settings['ssl']:
            context = ssl.create_default_context(
                cafile=settings['ssl_ca_certs'])
            context.check_hostname = (
                settings['ssl_check_hostname']
                and settings['ssl_cert_reqs'] != ssl.CERT_NONE)
            context.verify_mode = settings['ssl_cert_reqs']
            sock = context.wrap_socket(
                sock, server_hostname=settings.get('host'))
            sock.settimeout(settings['socket_timeout'])
            return sock
        # A blocking socket with the timeout kept by the kernel: with a
        # Python timeout, every send and receive polls first, two system
        # calls, each letting another thread take the GIL, where one does.
        sock.settimeout(None)
        seconds = settings['socket_timeout']
        if seconds:
            timeval = struct.pack('ll', *divmod(round(seconds * 1e6), 10**6))
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
                sock.setsockopt(socket.SOL_SOCKET, option, timeval)
        return sock

    def _handshake(self):
        settings = self.settings
        hello = ['HELLO', '3']
        if settings['password']:
            hello += ['AUTH', settings['username'] or 'default',
                      settings['password']]
        try:
            self.execute(*hello)
            resp3 = True
        except ReplyError as exc:
            if 'unknown command' not in str(exc).lower() \
                    and 'NOPROTO' not in str(exc):
                raise ConnectionError('Redis refused the connection: %s'
                                      % exc)
            resp3 = False  # Redis before 6: RESP2, no tracking.
            if settings['password']:
                self.execute('AUTH', *filter(None, [
                    settings['username'], settings['password']]))
        if settings['db']:
            self.execute('SELECT', settings['db'])
        self.resp3 = resp3
        if resp3 and self.on_invalidate is not None:
            try:
                self.execute('CLIENT', 'TRACKING', 'on', 'NOLOOP')
            except ReplyError:
                return  # A proxy or a server without tracking: no cache.
            # Before the connection reads anything it may keep.
            self.tracking = self._enter_cache()
            if not self.tracking:
                self.execute('CLIENT', 'TRACKING', 'off')

    def _enter_cache(self):
        """Subscribe to the cache's channel, then enter the channel in the
        registry (in this order, a writer never finds it there without a
        subscriber, and drops it as gone); False if the user's access list
        refuses the registry."""
        try:
            self._subscribe(self.channel)
            self.entry = self.channel
        except ReplyError:
            self.entry = UNNAMED_CACHE
        try:
            self._register()
        except ReplyError:
            return False
        return True

    def _register(self):
        # Read after the write: Redis then tells the connection when the
        # registry changes (a write of its own ends the tracking).
        self.pipeline(('SADD', CACHES_KEY, self.entry),
                      ('SISMEMBER', CACHES_KEY, self.entry))

    def still_registered(self):
        """Whether the registry still holds the cache's entry, which is
        entered again if not (the key was deleted or evicted); watched
        again either way."""
        if self.execute('SISMEMBER', CACHES_KEY, self.entry):
            return True
        self._register()
        return False

    def _subscribe(self, channel):
        self.sock.sendall(pack(('SUBSCRIBE', channel)))
        while True:
            # RESP3 confirms a subscription out of band.
            reply = self._reply()
            if isinstance(reply, ReplyError):
                raise reply
            if type(reply) is not Push:
                raise ProtocolError('unexpected reply %r' % (reply,))
            if reply[:1] in ([b'subscribe'], ['subscribe']):
                return
            self._notice(reply)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def execute(self, *command):
        """Send ``command`` and return its reply, taking in the notices
        that come before it."""
        self._send(pack(command))
        reply = self._answer()
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def pipeline(self, *commands):
        """Send ``commands`` at once and return their replies: one round
        trip.  The first error is raised once every reply is read."""
        self._send(b''.join(map(pack, commands)))
        replies = [self._answer() for _ in commands]
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise reply
        return replies

    def _send(self, data):
        if self.fd is not None:
            # What the socket's buffer takes now (as a rule all of it),
            # keeping the GIL; the rest, or the error, through Python's.
            sent = _c_send(self.fd, data, len(data), SEND_FLAGS)
            if sent == len(data):
                return
            data = data[max(sent, 0):]
        try:
            self.sock.sendall(data)
        except BlockingIOError:
            raise self._timeout()

    def _readable(self):
        """Whether the socket has something to read, asked without
        waiting."""
        if self.fd is not None:
            ready = _c_poll(self.pollfd, 1, 0)
            if ready >= 0:
                return ready > 0
        return bool(self.poller.poll(0))

    def _answer(self):
        """The next reply, after the notices that come before it."""
        while True:
            reply = self._reply()
            if type(reply) is not Push:
                return reply
            self._notice(reply)

    def take_notices(self):
        """Take in the notices that have arrived since the last reply."""
        while self.buffer or (self.tls and self.sock.pending()) \
                or self._readable():
            reply = self._reply()
            if type(reply) is not Push:
                raise ProtocolError('unexpected reply %r' % (reply,))
            self._notice(reply)

    def _notice(self, push):
        if push and push[0] in (b'invalidate', 'invalidate'):
            # None: the whole database was flushed.
            self.on_invalidate(push[1] if len(push) > 1 else None)

    # -- reading RESP2 and RESP3 --

    def _timeout(self):
        return TimeoutError('Redis did not answer within %s seconds '
                            '(socket_timeout)'
                            % self.settings['socket_timeout'])

    def _fill(self):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            # The kernel's SO_RCVTIMEO ran out.
            raise self._timeout()
        if not data:
            raise ConnectionError('Redis closed the connection')
        self.buffer += data

    def _line(self):
        while True:
            end = self.buffer.find(b'\r\n')
            if end >= 0:
                line = self.buffer[:end]
                self.buffer = self.buffer[end + 2:]
                return line
            self._fill()

    def _bulk(self, length):
        while len(self.buffer) < length + 2:
            self._fill()
        data = self.buffer[:length]
        self.buffer = self.buffer[length + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b'$':
            length = int(rest)
            return None if length < 0 else self._bulk(length)
        if kind in (b'*', b'~', b'>'):
            length = int(rest)
            if length < 0:
                return None
            items = [self._reply() for _ in range(length)]
            return Push(items) if kind == b'>' else items
        if kind == b':':
            return int(rest)
        if kind == b'+':
            return rest
        if kind == b'_':
            return None
        if kind == b'%':
            return {self._reply(): self._reply() for _ in range(int(rest))}
        if kind == b'-':
            return self._error(rest.decode(errors='replace'))
        if kind == b'!':
            return self._error(self._bulk(int(rest)).decode(
                errors='replace'))
        if kind == b'#':
            return rest == b't'
        if kind == b',':
            return float(rest)
        if kind == b'(':
            return int(rest)
        if kind == b'=':
            return self._bulk(int(rest))[4:]  # Without its "txt:".
        if kind == b'|':
            for _ in range(2 * int(rest)):  # Attributes: not used.
                self._reply()
            return self._reply()
        raise ProtocolError('unexpected reply %r' % (line[:40],))

    @staticmethod
    def _error(message):
        if message.startswith('NOSCRIPT'):
            return NoScriptError(message)
        return ReplyError(message)


class Slot:
    """A connection of its own for a share of the keys, and the cache of
    the values it read or wrote."""

    def __init__(self, settings, cache_size, client):
        self.settings = settings
        self.cache_size = cache_size
        self.client = client
        self.cache = {}
        self.caching = cache_size > 0
        self.connection = None
        # The database was flushed, and the registry with it.
        self.flushed = False
        # Somebody changed the registry: is the cache still in?
        self.registry_changed = False
        # It was not, for a while: writers may not have waited for the
        # notices of their writes to reach this cache.
        self.suspect = False
        self.lock = threading.Lock()
        _slots.add(self)

    def run(self, *command):
        """Send ``command`` (holding the lock) on a working connection.

        A connection Redis closed (a restart) is found out on its next
        use: the command is sent once more on a new connection.  A timeout
        is not retried: the server is there but does not answer.
        """
        for retry in (False, True):
            fresh = self._connection()
            try:
                return self.connection.execute(*command)
            except ReplyError:
                raise
            except BaseException as exc:
                self._drop()
                if fresh or retry or not isinstance(exc, ConnectionError):
                    raise

    def sync(self):
        """Return once Redis has sent out the notices of this connection's
        writes so far (needed when other processes cache).

        Redis sends a pass of its event loop's answers and notices one
        socket after the other; scheduled out in between, it can answer the
        writer long before it tells the other connections, and the browser's
        next request can reach another Zope first (on one CPU, nearly every
        time).  A command sent after the write's answer is read in a later
        pass: its answer comes after every notice of the write.  Sent
        whenever the server can track keys: other processes may cache,
        this one or not.
        """
        if self.connection is not None and self.connection.resp3:
            self.run('PING')

    def cached(self, key):
        """The value of ``key`` as the cache has it, or MISSING."""
        connection = self.connection
        if connection is None or not connection.tracking:
            return MISSING
        try:
            connection.take_notices()
        except BaseException as exc:
            return self._dropped(exc)
        if self.flushed:
            # A new connection enters the cache in the registry again,
            # before it reads what it keeps.
            self._drop()
            return MISSING
        if self.registry_changed:
            self.registry_changed = False
            try:
                if not connection.still_registered():
                    self.client.suspect_caches()
            except BaseException as exc:
                return self._dropped(exc)
        if self.suspect:
            self.suspect = False
            self.cache.clear()
            return MISSING
        return self.cache.get(key, MISSING)

    def _dropped(self, exc):
        """A cache miss after ``exc``: the connection, in a state nobody
        knows, is dropped, and the read goes to Redis on a new one.  An
        interruption (KeyboardInterrupt, SystemExit) goes on up."""
        self._drop()
        if not isinstance(exc, Exception):
            raise exc
        return MISSING

    def keep(self, key, value):
        """Cache what the connection just read or wrote: tracked now."""
        if not self.connection.tracking:
            return
        if len(self.cache) >= self.cache_size:
            del self.cache[next(iter(self.cache))]
        self.cache[key] = value

    def forget(self, key):
        self.cache.pop(key, None)

    def _connection(self):
        """Whether the connection had to be made for this command."""
        if self.connection is not None:
            return False
        self.connection = Connection(
            self.settings, self._invalidate if self.caching else None,
            self.client.channel)
        return True

    def _drop(self):
        # The notices of a lost connection are lost with it.
        self.cache.clear()
        self.flushed = False
        self.registry_changed = False
        self.suspect = False
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _after_fork(self):
        """In a forked child: the parent's connection, its cache and its
        lock (maybe held by a thread the child does not have) are not
        ours.  Closing our copy of the socket leaves the parent's open."""
        self.lock = threading.Lock()
        self._drop()

    def _invalidate(self, keys):
        if keys is None:
            self.cache.clear()
            self.flushed = True
            return
        for key in keys:
            key = key.decode() if isinstance(key, bytes) else key
            if key == CACHES_KEY:
                self.registry_changed = True
            else:
                self.cache.pop(key, None)


class Client:
    """The connections to one Redis server, shared by its stores."""

    def __init__(self, url, cache_size):
        self.settings = parse_url(url)
        self.serial = next(_client_serials)
        per_slot = max(1, cache_size // SLOTS) if cache_size else 0
        self.slots = [Slot(self.settings, per_slot, self)
                      for _ in range(SLOTS)]

    def slot(self, key):
        return self.slots[hash(key) % SLOTS]

    def suspect_caches(self):
        """The cache was missing from the registry: every slot starts
        afresh (the one that found out entered it again)."""
        for slot in self.slots:
            slot.suspect = True

    @property
    def channel(self):
        """The name of this process's cache of this client's records."""
        return CACHE_CHANNEL % (_process_token, self.serial)


def _forget_connections_in_child():
    global _process_token
    _process_token = secrets.token_hex(8)
    for slot in list(_slots):
        slot._after_fork()


# Instead of comparing process ids on every read (a system call each).
os.register_at_fork(after_in_child=_forget_connections_in_child)
