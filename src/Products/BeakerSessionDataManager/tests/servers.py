"""Real session stores for the tests, on free loopback ports.

The suite starts its own redis-server, Redis Cluster and memcached, so that
it never touches a server somebody else uses and can kill one to test an
outage.  A missing server binary skips the tests that need it, naming the
binary; with ``CI=true`` it fails them instead, since CI must run them all.

``shared_redis()``, ``shared_redis_cluster()``, ``shared_memcached(n)``
start a server once per test run and stop it at exit; tests that stop or
kill a server make their own with ``RedisServer()`` / ``MemcachedServer()``
and ``with server:``.
"""
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest


POSTGRESQL_URL = os.environ.get(
    'BEAKER_TEST_POSTGRESQL_URL',
    'postgresql+psycopg2://postgres@127.0.0.1:5432/test')
DEBIAN_PACKAGES = {
    'redis-server': 'redis-server',
    'redis-cli': 'redis-tools',
    'memcached': 'memcached',
    'mariadbd': 'mariadb-server',
    'mariadb-install-db': 'mariadb-server',
}
# Debian installs server binaries where a user's PATH may not look.
SBIN = ('/usr/sbin', '/usr/local/sbin')


def in_ci():
    return os.environ.get('CI', '').lower() == 'true'


def unavailable(reason):
    """Skip the calling test, or fail it in CI, where nothing may skip."""
    if in_ci():
        pytest.fail('%s (CI=true: tests may not skip)' % reason,
                    pytrace=False)
    pytest.skip(reason)


def require_binary(name):
    """The path of the server binary ``name``, or skip/fail naming it."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    if path is None:
        unavailable('%s is not installed (apt-get install %s)'
                    % (name, DEBIAN_PACKAGES.get(name, name)))
    return path


def as_root(command):
    """``command`` (a list) as root runs it: as it is if we are root,
    else through ``sudo -n`` (GitHub's runners are a user with sudo
    without a password); skip/fail if neither."""
    if os.geteuid() == 0:
        return list(command)
    if shutil.which('sudo') is None or subprocess.run(
            ('sudo', '-n', 'true'), capture_output=True).returncode:
        unavailable('needs root, or sudo without a password: %s'
                    % command[0])
    return ['sudo', '-n', '--'] + list(command)


def free_port(below=65536):
    """A free loopback port under ``below``."""
    while True:
        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            port = sock.getsockname()[1]
        if port < below:
            return port


def listening(port, host='127.0.0.1'):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout=20.0, what='condition'):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError('timed out after %ss waiting for %s' % (timeout, what))


class Server:
    """A server process of ours; a context manager that starts and stops it.

    ``stop()`` ends it gracefully, ``kill()`` abruptly (an outage);
    ``start()`` starts it again on the same port.
    """

    binary = None

    def __init__(self, port=None):
        self.path = require_binary(self.binary)
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix='beaker-%s-' % self.binary)
        self.process = None

    def command(self):
        raise NotImplementedError

    def start(self):
        log = open(os.path.join(self.dir, 'server.log'), 'ab')
        self.process = subprocess.Popen(
            self.command(), cwd=self.dir, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_until(lambda: self.process.poll() is None
                       and listening(self.port),
                       what='%s on port %s' % (self.binary, self.port))
        except RuntimeError:
            self.stop()
            raise RuntimeError('%s did not start; its log: %s' % (
                self.binary, self.log()))
        return self

    def log(self):
        with open(os.path.join(self.dir, 'server.log'), errors='replace') as f:
            return f.read()[-2000:]

    def stop(self):
        self._end(self.process and self.process.terminate)

    def kill(self):
        self._end(self.process and self.process.kill)

    def _end(self, signal):
        if self.process is None:
            return
        if self.process.poll() is None:
            signal()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.cleanup()


class RedisServer(Server):
    """A redis-server that keeps nothing on disk."""

    binary = 'redis-server'

    def __init__(self, port=None, *extra_args):
        super().__init__(port)
        self.extra_args = list(extra_args)

    def command(self):
        return [self.path, '--port', str(self.port), '--bind', '127.0.0.1',
                '--save', '', '--appendonly', 'no', '--dir', self.dir,
                ] + self.extra_args

    @property
    def url(self):
        return 'redis://127.0.0.1:%s/0' % self.port

    def client(self):
        import redis
        return redis.Redis(port=self.port)


class RedisCluster:
    """Three redis-server nodes joined into a cluster with redis-cli.

    ``kill()`` kills every node (an outage); ``start()`` starts them again
    on their ports, with the cluster's configuration they keep on disk.
    """

    def __init__(self, size=3):
        require_binary('redis-cli')
        self.created = False
        self.nodes = []
        for _ in range(size):
            # A node's cluster bus listens on its port + 10000.
            port = free_port(below=55536)
            self.nodes.append(RedisServer(
                port, '--cluster-enabled', 'yes',
                '--cluster-config-file', 'nodes-%s.conf' % port,
                '--cluster-node-timeout', '2000'))

    @property
    def urls(self):
        return ','.join('redis://127.0.0.1:%s' % node.port
                        for node in self.nodes)

    @property
    def port(self):
        """The port of the first node, where clients start."""
        return self.nodes[0].port

    def start(self):
        for node in self.nodes:
            node.start()
        if not self.created:
            addresses = ['127.0.0.1:%s' % node.port for node in self.nodes]
            subprocess.run(
                ['redis-cli', '--cluster', 'create'] + addresses
                + ['--cluster-replicas', '0', '--cluster-yes'],
                check=True, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, timeout=60)
            self.created = True
        wait_until(self._ready, what='the redis cluster')
        return self

    def kill(self):
        for node in self.nodes:
            node.kill()

    def _ready(self):
        for node in self.nodes:
            info = subprocess.run(
                ['redis-cli', '-p', str(node.port), 'cluster', 'info'],
                capture_output=True, text=True, timeout=10).stdout
            if 'cluster_state:ok' not in info:
                return False
        return True

    def cleanup(self):
        for node in self.nodes:
            node.cleanup()

    stop = cleanup

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.cleanup()


class MemcachedServer(Server):

    binary = 'memcached'

    def command(self):
        command = [self.path, '-l', '127.0.0.1', '-p', str(self.port),
                   '-U', '0', '-m', '64']
        if os.geteuid() == 0:
            command += ['-u', 'root']  # memcached refuses root otherwise
        return command

    @property
    def address(self):
        return '127.0.0.1:%s' % self.port


class MariaDBServer(Server):
    """A MariaDB server with a database ``test``, in a directory of its
    own: ``mariadb-install-db`` makes it, once."""

    binary = 'mariadbd'

    def __init__(self, port=None):
        super().__init__(port)
        self.install_db = require_binary('mariadb-install-db')
        self.installed = False

    def command(self):
        command = [self.path, '--no-defaults',
                   '--datadir=%s' % os.path.join(self.dir, 'data'),
                   '--port=%s' % self.port, '--bind-address=127.0.0.1',
                   '--socket=%s' % os.path.join(self.dir, 'mariadb.sock'),
                   '--pid-file=%s' % os.path.join(self.dir, 'mariadb.pid'),
                   '--innodb-buffer-pool-size=16M', '--skip-log-bin']
        if os.geteuid() == 0:
            command.append('--user=root')  # mariadbd refuses root otherwise
        return command

    def start(self):
        if not self.installed:
            subprocess.run(
                [self.install_db, '--no-defaults', '--skip-test-db',
                 '--auth-root-authentication-method=normal',
                 '--datadir=%s' % os.path.join(self.dir, 'data')]
                + (['--user=root'] if os.geteuid() == 0 else []),
                check=True, cwd=self.dir, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, timeout=120)
            self.installed = True
        super().start()
        import sqlalchemy
        engine = sqlalchemy.create_engine(self.url.rsplit('/', 1)[0])
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(
                    'CREATE DATABASE IF NOT EXISTS test')
        finally:
            engine.dispose()
        return self

    @property
    def url(self):
        return 'mysql+pymysql://root@127.0.0.1:%s/test' % self.port


def memcached_url(servers):
    """Beaker's ``session.url`` for a pool of memcached servers."""
    return ';'.join(server.address for server in servers)


_shared = {}


def _shared_server(key, factory):
    server = _shared.get(key)
    if server is None:
        server = _shared[key] = factory().start()
        atexit.register(server.cleanup)
    return server


def shared_redis():
    """A redis-server for the whole test run."""
    return _shared_server('redis', RedisServer)


def shared_redis_cluster():
    """A three-node Redis Cluster for the whole test run."""
    return _shared_server('redis-cluster', RedisCluster)


def shared_memcached(count=1):
    """``count`` memcached servers for the whole test run."""
    return [_shared_server('memcached-%s' % i, MemcachedServer)
            for i in range(count)]


def shared_mariadb():
    """A MariaDB server for the whole test run; its URL (PyMySQL)."""
    try:
        import pymysql  # noqa: F401
    except ImportError:
        unavailable('PyMySQL is not installed (pip install '
                    '"Products.BeakerSessionDataManager[mysql]")')
    return _shared_server('mariadb', MariaDBServer).url


def postgresql_url():
    """The URL of the PostgreSQL test database, or skip/fail."""
    try:
        import sqlalchemy
        engine = sqlalchemy.create_engine(POSTGRESQL_URL)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        unavailable('PostgreSQL is not reachable at %s: %s'
                    % (POSTGRESQL_URL, exc))
    return POSTGRESQL_URL


def host_and_port(database_url):
    import sqlalchemy
    url = sqlalchemy.engine.make_url(database_url)
    return url.host or '127.0.0.1', url.port or 5432


def unique_name(prefix='beaker_test'):
    """A table or schema name no other test run uses."""
    return '%s_%s' % (prefix, uuid.uuid4().hex[:12])


class TcpProxy:
    """Forwards a loopback port to a server we cannot stop ourselves (the
    system's PostgreSQL): ``stop()`` cuts every connection and refuses new
    ones, like a server that died; ``start()`` serves again on the same
    port."""

    def __init__(self, target_port, target_host='127.0.0.1', port=None,
                 host='127.0.0.1'):
        self.target = (target_host, target_port)
        self.host = host
        self.port = port or free_port()
        self.listener = None
        self.sockets = set()
        self.lock = threading.Lock()

    def start(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,),
                         daemon=True).start()
        return self

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                if self.listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self.sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink),
                                 daemon=True).start()

    def _pump(self, source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            self._close(sock)

    def _close(self, sock):
        with self.lock:
            self.sockets.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def stop(self):
        with self.lock:
            listener, self.listener = self.listener, None
            sockets = list(self.sockets)
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            except OSError:
                pass
            listener.close()
        for sock in sockets:
            self._close(sock)

    kill = stop

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


class VanishingHost:
    """A server on another host that can vanish from the network, as a
    host that crashed or lost its cable does: packets to it are dropped
    without an answer, where a dead server's host refuses them.

    The host is a network namespace with a virtual cable (a veth pair);
    a proxy in it forwards ``address`` to the loopback port
    ``target_port`` through a ``TcpProxy`` on our end of the cable, and
    ``vanish()`` unplugs the cable at the host's end.  Needs ``ip``
    (iproute2) and root, or sudo (``as_root``).
    """

    def __init__(self, target_port):
        self.target_port = target_port
        self.name = 'bsdm%s' % uuid.uuid4().hex[:8]
        subnet = uuid.uuid4().int % 16384 * 4  # a /30 in 10.213.0.0/16
        self.ours = '10.213.%d.%d' % (subnet // 256, subnet % 256 + 1)
        self.theirs = '10.213.%d.%d' % (subnet // 256, subnet % 256 + 2)
        self.address = (self.theirs, 5432)
        self.relay = None
        self.proxy = None

    def _ip(self, *args):
        subprocess.run(as_root(('ip',) + args), check=True,
                       capture_output=True)

    def _in_host(self, *args):
        self._ip('netns', 'exec', self.name, 'ip', *args)

    def start(self):
        require_binary('ip')
        try:
            self._ip('netns', 'add', self.name)
        except subprocess.CalledProcessError as exc:
            unavailable('cannot make a network namespace (needs root): %s'
                        % exc.stderr.decode().strip())
        try:
            ours, theirs = self.name + 'a', self.name + 'b'
            self._ip('link', 'add', ours, 'type', 'veth',
                     'peer', 'name', theirs)
            self._ip('link', 'set', theirs, 'netns', self.name)
            self._ip('addr', 'add', self.ours + '/30', 'dev', ours)
            self._ip('link', 'set', ours, 'up')
            self._in_host('addr', 'add', self.theirs + '/30', 'dev', theirs)
            self._in_host('link', 'set', theirs, 'up')
            self.relay = TcpProxy(self.target_port, host=self.ours).start()
            # The proxy ends at the end of its input (a signal would
            # end sudo, not the proxy).
            self.proxy = subprocess.Popen(
                as_root(('ip', 'netns', 'exec', self.name, sys.executable,
                         '-c', 'import sys; from %s import TcpProxy; '
                         'TcpProxy(%d, %r, %d, host=%r).start(); '
                         'print("ready", flush=True); sys.stdin.read()'
                         % (__name__, self.relay.port, self.ours,
                            self.address[1], self.theirs))),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if self.proxy.stdout.readline().strip() != 'ready':
                raise RuntimeError('the proxy in %s did not start'
                                   % self.name)
        except BaseException:
            self.stop()
            raise
        return self

    def vanish(self):
        self._in_host('link', 'set', self.name + 'b', 'down')

    def stop(self):
        if self.proxy is not None:
            self.proxy.stdin.close()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
            self.proxy.stdout.close()
        if self.relay is not None:
            self.relay.stop()
        # Removing the namespace removes the cable too.
        subprocess.run(as_root(('ip', 'netns', 'del', self.name)),
                       capture_output=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


class PostgreSQLQueryCounter:
    """A TCP proxy in front of PostgreSQL that counts the queries clients
    send: round trips, counted on the wire, not timed.

    psycopg2 sends each statement as one simple-protocol ``Query``
    message (``Q``), its own ``BEGIN`` included, and waits for the answer;
    ``queries`` lists their texts.  Connect with ``sslmode=disable``: the
    proxy reads the messages.
    """

    def __init__(self, host='127.0.0.1', port=5432):
        self.target = (host, port)
        self.queries = []
        self.sockets = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url):
        """``database_url`` through the proxy."""
        import sqlalchemy
        url = sqlalchemy.engine.make_url(database_url).set(
            host='127.0.0.1', port=self.port)
        return url.update_query_dict({'sslmode': 'disable'}).render_as_string(
            hide_password=False)

    def close(self):
        self.listener.close()
        self.drop_connections()

    def drop_connections(self):
        """Cut every connection, as a database restart does."""
        for end in self.sockets:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        del self.sockets[:]

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # Closed.
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False),
                             daemon=True).start()

    def _pump(self, source, sink, from_client):
        buffer, started = b'', False
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if from_client:
                    # Before passing it on: the answer comes after.
                    buffer, started = self._count(buffer + data, started)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _count(self, buffer, started):
        """Take the whole messages off ``buffer``; what is left, and
        whether the start-up (messages without a type byte) is over."""
        while True:
            if not started:
                if len(buffer) < 8:
                    return buffer, started
                length = int.from_bytes(buffer[:4], 'big')
                if len(buffer) < length:
                    return buffer, started
                code = int.from_bytes(buffer[4:8], 'big')
                # SSLRequest and GSSENCRequest come before the start-up.
                started = code not in (80877103, 80877104)
                buffer = buffer[length:]
                continue
            if len(buffer) < 5:
                return buffer, started
            length = int.from_bytes(buffer[1:5], 'big')
            if len(buffer) < length + 1:
                return buffer, started
            if buffer[:1] == b'Q':
                self.queries.append(
                    buffer[5:length].rstrip(b'\0').decode(errors='replace'))
            buffer = buffer[length + 1:]
