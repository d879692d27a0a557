"""Every server-side store the suite runs against, made on demand.

``make_store(name)`` returns the ``<product-config beaker>`` settings of a
fresh store (its own directory, table or server) and a function removing
what it made.  Servers come from ``servers``: a missing binary or database
skips the store's tests, naming it (fails them with ``CI=true``).
``LAYERS[name]`` runs the functional tests of ``BEAKER_SESSIONS_FIXTURE``
with that store instead of the file store.
"""
import functools
import os
import pickle
import secrets
import shutil
import tempfile

from Products.BeakerSessionDataManager import testing

from . import servers


# Stores whose sessions outlive the process (a Zope restart).
PERSISTENT = ('file', 'dbm', 'redis', 'rediscluster', 'memcached',
              'memcached_pool', 'sqlite', 'postgresql', 'sqla_sqlite',
              'sqla_postgresql', 'mariadb')
STORES = ('memory',) + PERSISTENT
SQL_TYPES = {
    'sqlite': 'ext:database', 'postgresql': 'ext:database',
    'sqla_sqlite': 'ext:sqla', 'sqla_postgresql': 'ext:sqla',
    'mariadb': 'ext:database',
}


# Python 2's pickle of {'session': {'name': 'J\xfcrgen'}}, a row as 2.x of
# this product left it: Python 3 cannot decode the str as ASCII.
PYTHON2_ROW = (b"(dp0\nS'session'\np1\n(dp2\nS'name'\np3\n"
               b"S'J\\xfcrgen'\np4\nss.")


# What RUNS_CODE calls when it is unpickled.
CALLS = []


def called(*args):
    CALLS.append(args)
    return {}


class CallsWhenUnpickled:

    def __reduce__(self):
        return called, ('unpickled',)


# A pickle that runs code when it is loaded, as one that someone who can
# write to the store would plant.
RUNS_CODE = pickle.dumps(CallsWhenUnpickled())


def age(store, session_id, seconds):
    """Make the session's last access ``seconds`` older in ``store``."""
    def older(record):
        if record is None:  # A first guess of a compare-and-set store.
            return None
        record['_accessed_time'] -= seconds
        return record
    store.merge(session_id, older)


def make_store(name, **options):
    """``(settings, cleanup)`` of a new store ``name``; ``options`` are
    more settings (``session.`` prefix added)."""
    settings = {'session.secret': secrets.token_urlsafe(36)}
    cleanup = _nothing
    if name in ('file', 'dbm'):
        directory = tempfile.mkdtemp(prefix='beaker-%s-' % name)
        settings.update({
            'session.type': name,
            'session.data_dir': os.path.join(directory, 'data'),
            'session.lock_dir': os.path.join(directory, 'lock'),
        })
        cleanup = functools.partial(shutil.rmtree, directory, True)
    elif name == 'memory':
        settings['session.type'] = 'memory'
    elif name == 'redis':
        settings.update({'session.type': 'ext:redis',
                         'session.url': servers.shared_redis().url})
    elif name == 'rediscluster':
        settings.update({'session.type': 'ext:rediscluster',
                         'session.url': servers.shared_redis_cluster().urls})
    elif name in ('memcached', 'memcached_pool'):
        pool = servers.shared_memcached(2 if name == 'memcached_pool' else 1)
        settings.update({'session.type': 'ext:memcached',
                         'session.url': servers.memcached_url(pool)})
    elif name in SQL_TYPES:
        url, cleanup = sql_database(name)
        settings.update({'session.type': SQL_TYPES[name],
                         'session.url': url,
                         'session.table_name': servers.unique_name()})
        cleanup = functools.partial(
            drop_table, url, settings['session.table_name'], cleanup)
    else:
        raise ValueError('no store %r' % name)
    settings.update({'session.' + key: str(value)
                     for key, value in options.items()})
    return settings, cleanup


def _nothing():
    pass


def sql_database(name):
    """The URL of the database for store ``name`` and its cleanup."""
    if name.endswith('postgresql'):
        return servers.postgresql_url(), _nothing
    if name.endswith('mariadb'):
        return servers.shared_mariadb(), _nothing
    directory = tempfile.mkdtemp(prefix='beaker-sqlite-')
    url = 'sqlite:///%s' % os.path.join(directory, 'sessions.db')
    return url, functools.partial(shutil.rmtree, directory, True)


def overwrite_rows(url, table_name, session_ids, data):
    """Put the bytes ``data``, not pickled, in the rows of
    ``session_ids``."""
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for session_id in session_ids:
                updated = connection.execute(sa.text(
                    'UPDATE %s SET data = :data WHERE namespace = :id'
                    % table_name), {'data': data, 'id': session_id})
                assert updated.rowcount == 1, session_id
    finally:
        engine.dispose()


def drop_table(url, table_name, then=_nothing):
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text('DROP TABLE IF EXISTS %s'
                                       % table_name))
    finally:
        engine.dispose()
        then()


LAYERS = {name: testing.store_functional_testing(
    name, functools.partial(make_store, name)) for name in STORES}
