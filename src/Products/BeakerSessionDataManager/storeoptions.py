"""Check the options of each store at start-up, without connecting.

``namespace_for`` picks the store's Beaker namespace manager (this
product's from ``namespaces`` where it replaces Beaker's), checks that the
store's client library is installed and that it can read ``session.url``,
and gives SQL engines the connection defaults they lack (pool pre-ping;
libpq's connect, keepalive and TCP user timeouts).  A mistake stops Zope
with a message naming the option instead of failing on a visitor's
request.
"""
import importlib
import os
import re
from urllib.parse import urlsplit

from beaker.cache import clsmap

from .interfaces import ConfigurationError
from .namespaces import NAMESPACE_CLASSES


# What each store type needs: the module of its client library, the extra
# that installs it, and the form of ``session.url``.
CLIENTS = {
    'ext:redis': ('redis', 'redis', 'redis://HOST:PORT/DB'),
    'ext:rediscluster': (
        'redis.cluster', 'redis', 'redis://HOST:PORT,redis://HOST:PORT,...'),
    'ext:memcached': ('memcache', 'memcached', 'HOST:PORT[;HOST:PORT...]'),
    'ext:database': ('sqlalchemy', 'sqlalchemy', 'an SQLAlchemy URL'),
    'ext:sqla': ('sqlalchemy', 'sqlalchemy', 'an SQLAlchemy URL'),
}
# python-memcached: the client whose answers the memcached store checks.
MEMCACHE_MODULE = 'memcache'
SQL_ENGINE_DEFAULTS = {
    # A database restart would otherwise fail one request per pooled
    # connection.
    'sa.pool_pre_ping': True,
}
# libpq's drivers wait for a server that accepts and never answers, and for
# one gone from the network, for as long as TCP does (a quarter of an hour
# and more), holding the request's thread; once every thread waits, no page
# is served.  Unless session.url says otherwise (``?connect_timeout=``):
LIBPQ_DRIVERS = ('psycopg2', 'psycopg')
LIBPQ_CONNECT_ARGS = {
    'connect_timeout': 5,
    # A connection idle for 30 s is probed; three unanswered probes, 10 s
    # apart, end it.
    'keepalives': 1, 'keepalives_idle': 30, 'keepalives_interval': 10,
    'keepalives_count': 3,
}
# Keepalives wait while a query is unanswered; a query sent to a server gone
# from the network (host down, cable cut) would wait for TCP's
# retransmissions instead, a quarter of an hour.  libpq 12 and newer end it
# once data sent has gone 30 s unacknowledged; older ones refuse the option.
LIBPQ_USER_TIMEOUT = {'tcp_user_timeout': 30000}


def namespace_for(store_type, args):
    """Check the store options in ``args`` (Beaker's namespace arguments);
    return the namespace class and the arguments it takes."""
    args = dict(args)
    namespace_class = NAMESPACE_CLASSES.get(store_type)
    if namespace_class is None:
        try:
            namespace_class = clsmap[store_type]
        except Exception as exc:
            raise ConfigurationError(
                'session.type: the %s store cannot be used: %s'
                % (store_type, exc))
    if store_type not in CLIENTS:
        return namespace_class, args
    module, extra, url_form = CLIENTS[store_type]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            'session.type: the %s store needs the %s module (%s): pip '
            'install "Products.BeakerSessionDataManager[%s]"'
            % (store_type, module, exc, extra))
    if store_type == 'ext:rediscluster':
        # Beaker calls it ``urls``; ``url`` as for every other store.
        if args.get('url') and args.get('urls'):
            raise ConfigurationError(
                'session.urls: give the cluster nodes in session.url or in '
                'session.urls, not in both.')
        args['urls'] = args.pop('url', None) or args.get('urls')
    url = args.get('urls' if store_type == 'ext:rediscluster' else 'url')
    if not url:
        raise ConfigurationError(
            'session.url: required for session.type %s: %s.'
            % (store_type, url_form))
    CHECKS[extra](store_type, url, args)
    return namespace_class, args


def check_redis_url(store_type, url, args):
    import redis

    from .redisclient import SSL_CERT_REQS
    for one in url.split(','):
        try:
            parsed = redis.connection.parse_url(one.strip())
        except ValueError as exc:
            raise ConfigurationError(
                'session.url: %s (the %s store takes %s).'
                % (exc, store_type, CLIENTS[store_type][2]))
        # Both clients would fail on any other value: redis-py at the
        # first connection, this product's at start-up with a KeyError.
        cert_reqs = parsed.get('ssl_cert_reqs')
        if cert_reqs is not None and cert_reqs not in SSL_CERT_REQS:
            raise ConfigurationError(
                'session.url: the parameter ssl_cert_reqs is none, '
                'optional or required, not %r.' % cert_reqs)
        if store_type == 'ext:rediscluster' and parsed.get('db'):
            raise ConfigurationError(
                'session.url: a Redis Cluster has only database 0, not %s.'
                % parsed['db'])


def check_memcached(store_type, url, args):
    import memcache
    module = args.setdefault('memcache_module', MEMCACHE_MODULE)
    if module != MEMCACHE_MODULE:
        raise ConfigurationError(
            'session.memcache_module: only %r (python-memcached) is '
            'supported: the store relies on how it reports dead servers.'
            % MEMCACHE_MODULE)
    servers = url.split(';')
    try:
        memcache.Client(servers)
    except ValueError:
        valid = False
    else:
        # python-memcached would look for a host of that name.
        valid = not any(re.search(r'[\s,]', server) for server in servers)
    if not valid:
        raise ConfigurationError(
            'session.url: the ext:memcached store takes %s: servers '
            'separated by semicolons, with no scheme (memcached://) and no '
            'spaces.' % CLIENTS[store_type][2])


def libpq_version(driver):
    """The version of the libpq that ``driver`` runs on, as libpq numbers
    it (120000 for 12.0)."""
    if driver == 'psycopg2':
        from psycopg2.extensions import libpq_version
        return libpq_version()
    from psycopg import pq
    return pq.version()


def check_sql_url(store_type, url, args):
    import sqlalchemy as sa
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError('session.url: %s.' % exc)
    try:
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except ImportError as exc:
        raise ConfigurationError(
            'session.url: the database driver of %s:// is missing (%s). '
            'Install it, or name an installed one in the URL: for '
            'PostgreSQL, pip install '
            '"Products.BeakerSessionDataManager[postgresql]" installs '
            'psycopg2, for postgresql+psycopg2://USER@HOST/DATABASE.'
            % (parsed.drivername, exc))
    except sa.exc.NoSuchModuleError as exc:
        raise ConfigurationError('session.url: %s.' % exc)
    if dialect.name == 'sqlite' and parsed.database in (None, '', ':memory:'):
        raise ConfigurationError(
            'session.url: an in-memory SQLite database is private to one '
            'connection; give a file: sqlite:////ABSOLUTE/PATH/sessions.db')
    if dialect.name == 'sqlite':
        path = parsed.database
        if parsed.query.get('uri'):
            path = urlsplit(path).path  # file:PATH?mode=...
        if not os.path.isabs(path):
            raise ConfigurationError(
                'session.url: the SQLite database %s is a relative path, '
                'which depends on the directory Zope starts in; give an '
                'absolute one: sqlite:////ABSOLUTE/PATH/sessions.db'
                % parsed.database)
    if 'sa.url' in args:
        # Beaker and the store make the engine for session.url.
        raise ConfigurationError(
            'session.sa.url: the database is session.url; remove it.')
    sa_opts = dict(SQL_ENGINE_DEFAULTS)
    for name in list(args):
        if name.startswith('sa.'):
            sa_opts[name] = args.pop(name)
    for name, value in sorted(sa_opts.items()):
        # SQLAlchemy checks the options when it makes an engine, which
        # does not connect; the store would make it at the first request.
        try:
            sa.engine_from_config(
                {'sa.url': url, name: value}, 'sa.').dispose()
        except Exception as exc:
            raise ConfigurationError(
                'session.%s: SQLAlchemy refuses it (%s: %s); see the '
                'arguments of create_engine() in its documentation.'
                % (name, type(exc).__name__, exc))
    if dialect.driver in LIBPQ_DRIVERS:
        connect_args = dict(LIBPQ_CONNECT_ARGS)
        if libpq_version(dialect.driver) >= 120000:
            connect_args.update(LIBPQ_USER_TIMEOUT)
        sa_opts['sa.connect_args'] = {
            name: value for name, value in connect_args.items()
            if name not in parsed.query}
    args['sa_opts'] = sa_opts


CHECKS = {
    'redis': check_redis_url,
    'memcached': check_memcached,
    'sqlalchemy': check_sql_url,
}
