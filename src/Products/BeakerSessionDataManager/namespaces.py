"""Beaker's namespace managers as the stores use them.

Beaker locks SQL namespaces with a file lock on the local disk, which does
nothing for a second Zope on another host (memcached has its own store,
``memcachedstore``, which needs no lock), and creates
the file of a new dbm namespace without a lock.  These subclasses keep
Beaker's keys, files, tables and record format, so that Beaker's own
sessions can still share the store, and replace the locking:

- SQL: the read and the write of a merge happen in one database
  transaction, under a transaction-level advisory lock on PostgreSQL,
  ``BEGIN IMMEDIATE`` on SQLite and ``SELECT ... FOR UPDATE`` elsewhere,
  waiting at most ``LOCK_WAIT`` seconds on the first two and on MySQL and
  MariaDB (``innodb_lock_wait_timeout``);
- dbm: the file of a new session is created under the session's lock, and
  an index a crash cut short is no session instead of an error;
- file and dbm: records are unpickled as plain data only.
"""
import logging
import math
import os
from contextlib import contextmanager
from datetime import datetime
from hashlib import sha256

from beaker.container import DBMNamespaceManager
from beaker.container import FileNamespaceManager
from beaker.ext.database import DatabaseNamespaceManager
from beaker.ext.memcached import MemcachedNamespaceManager
from beaker.ext.sqla import SqlaNamespaceManager
from beaker.ext.sqla import make_cache_table
from beaker.synchronization import null_synchronizer

from .outages import describe
from .store import PlainUnpickler
from .store import pickled_dict
from .store import plain_loads


logger = logging.getLogger('Products.BeakerSessionDataManager')

# Seconds a merge waits for another writer of the same session.
LOCK_WAIT = 10


class LockTimeout(Exception):
    """Another writer held the session's lock for too long."""


class FileSessionNamespace(FileNamespaceManager):
    """Beaker's file namespace, reading the file as plain data only
    (``store.PlainUnpickler``): the cleanup, and the store elsewhere than
    on POSIX systems, read session files through it."""

    def do_open(self, flags, replace):
        if not replace:
            try:
                with open(self.file, 'rb') as file:
                    self.hash = PlainUnpickler(file).load()
            except (FileNotFoundError, PermissionError):
                pass  # As Beaker: the file is gone, or not ours to read.
        self.flags = flags


class DBMSessionNamespace(DBMNamespaceManager):
    """Beaker's dbm namespace, creating a session's file under its lock.

    Beaker creates the file of a new namespace unlocked; two threads or
    processes creating it at once break Python's ``dbm.dumb`` (the only dbm
    module of some Python builds) with FileNotFoundError.
    """

    def _checkfile(self):
        if self.file_exists(self.file):
            return
        self.access_lock.acquire_write_lock()
        try:
            super()._checkfile()
        finally:
            self.access_lock.release_write_lock()

    def do_open(self, flags, replace):
        """A dbm.dumb index (``.dir``) a crash cut short is no session,
        as a session file cut short is: read, it holds nothing; written
        (under the session's lock), it is made afresh.  Beaker fails on it
        for good, and so did every request of the session (503)."""
        try:
            super().do_open(flags, replace)
        except DAMAGED_DBM as exc:
            if flags == 'r':
                self.dbm = EmptyDatabase()
                return
            logger.warning('The dbm file %s of a session cannot be read '
                           '(%s): it is made afresh.', self.file,
                           describe(exc))
            self.do_remove()
            try:
                os.remove(self.file + '.bak')  # dbm.dumb's, too
            except OSError:
                pass
            super().do_open(flags, replace)

    def __getitem__(self, key):
        # A value that cannot be unpickled as plain data (written by
        # Python 2, or not by Beaker) is no value, as a session file that
        # cannot be is no session.
        data = self.dbm[key]
        try:
            return plain_loads(data)
        except Exception:
            raise KeyError(key) from None


# What dbm.dumb raises for an index (``.dir``) that is not whole: it reads
# the index with ast.literal_eval.
DAMAGED_DBM = (SyntaxError, ValueError)


class EmptyDatabase(dict):
    """An empty, read-only dbm database."""

    def close(self):
        pass


def advisory_lock_key(table, namespace):
    """A signed 64-bit number for PostgreSQL's advisory locks."""
    digest = sha256(('%s:%s' % (table.name, namespace)).encode()).digest()
    return int.from_bytes(digest[:8], 'big', signed=True)


# MySQL's and MariaDB's ER_LOCK_WAIT_TIMEOUT and ER_LOCK_DEADLOCK.
MYSQL_LOCK_WAIT_TIMEOUT = 1205
MYSQL_DEADLOCK = 1213


def is_lock_timeout(error):
    """PostgreSQL's lock_not_available, SQLite's busy timeout, MySQL's and
    MariaDB's lock wait timeout."""
    args = getattr(error, 'args', None) or (None,)
    return (getattr(error, 'pgcode', None) == '55P03'
            or 'database is locked' in str(error)
            or args[0] == MYSQL_LOCK_WAIT_TIMEOUT)


def is_deadlock(error):
    """MySQL's and MariaDB's deadlock, whose victim is rolled back."""
    args = getattr(error, 'args', None) or (None,)
    return args[0] == MYSQL_DEADLOCK


def bound_lock_wait(connection):
    """Make the locks this connection's transaction takes wait at most
    ``LOCK_WAIT`` seconds: PostgreSQL's ``lock_timeout``, MySQL's and
    MariaDB's ``innodb_lock_wait_timeout`` (whole seconds; InnoDB waits 50
    by default).  SQLite's is ``begin_immediate``'s."""
    import sqlalchemy as sa
    dialect = connection.dialect.name
    if dialect == 'postgresql':
        connection.execute(
            sa.text("SELECT set_config('lock_timeout', :wait, true)"),
            {'wait': '%dms' % (LOCK_WAIT * 1000)})
    elif dialect in ('mysql', 'mariadb'):
        connection.exec_driver_sql(
            'SET SESSION innodb_lock_wait_timeout = %d'
            % max(1, math.ceil(LOCK_WAIT)))


@contextmanager
def lock_wait_reported(what):
    """A lock wait that ran out (``is_lock_timeout``) raised as
    ``LockTimeout``: '``what`` locked by another writer for too long'."""
    import sqlalchemy as sa
    try:
        yield
    except sa.exc.OperationalError as exc:
        if not is_lock_timeout(exc.orig):
            raise
        raise LockTimeout('%s locked by another writer for too long: %s'
                          % (what, exc.orig)) from exc


def begin_immediate(connection):
    """Begin SQLite's transaction with its write lock, waiting for it at
    most ``LOCK_WAIT`` seconds."""
    connection.exec_driver_sql('PRAGMA busy_timeout = %d' % (LOCK_WAIT * 1000))
    connection.exec_driver_sql('BEGIN IMMEDIATE')


class TransactionalSqlNamespace:
    """Merge in one database transaction, locked across hosts.

    ``acquire_write_lock`` opens the transaction, takes the lock and reads
    the row; ``release_write_lock`` writes what changed and commits.  The
    ``accessed`` column is updated on every write, as Beaker does.
    """

    # Whether the row read under the lock could not be unpickled.
    damaged = False

    def get_creation_lock(self, key):
        # The write lock is the lock.
        return null_synchronizer()

    def acquire_write_lock(self, wait=True, replace=False):
        import sqlalchemy as sa
        connection = self.bind.connect()
        try:
            self._transaction = connection.begin()
            # The pickle unpickled here, not by the column's PickleType:
            # one this Python cannot load is a damaged row, not an error.
            query = sa.select(
                sa.type_coerce(self.table.c.data, sa.LargeBinary)).where(
                    self.table.c.namespace == self.namespace)
            dialect = connection.dialect.name
            with lock_wait_reported('the session was'):
                if dialect == 'sqlite':
                    begin_immediate(connection)
                else:
                    bound_lock_wait(connection)
                if dialect == 'postgresql':
                    connection.execute(
                        sa.text('SELECT pg_advisory_xact_lock(:key)'),
                        {'key': advisory_lock_key(self.table,
                                                  self.namespace)})
                elif dialect != 'sqlite':
                    # MySQL, MariaDB and the others: the row's lock.
                    query = query.with_for_update()
                row = connection.execute(query).first()
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        contents = {} if row is None else pickled_dict(bytes(row[0]))
        self.damaged = contents is None
        self.hash = contents or {}
        self._is_new = row is None
        self._changed = False
        return True

    def release_write_lock(self):
        connection = self._connection
        try:
            if self._changed:
                self._write(connection)
            self._transaction.commit()
        finally:
            self._connection = self._transaction = None
            connection.close()

    def _write(self, connection):
        table = self.table
        mine = table.c.namespace == self.namespace
        now = datetime.now()
        if not self.hash:
            connection.execute(table.delete().where(mine))
            return
        if not self._is_new and connection.execute(
                table.update().where(mine),
                {'data': self.hash, 'accessed': now}).rowcount:
            return
        # New, or removed since we read it (beaker-sessions cleanup).
        connection.execute(table.insert(), {
            'namespace': self.namespace, 'data': self.hash,
            'accessed': now, 'created': now})

    def __setitem__(self, key, value):
        self.hash[key] = value
        self._changed = True

    def __delitem__(self, key):
        del self.hash[key]
        self._changed = True


class DatabaseSessionNamespace(TransactionalSqlNamespace,
                               DatabaseNamespaceManager):
    """``ext:database``: Beaker's table (created if missing), locked
    merges."""


class SqlaSessionNamespace(TransactionalSqlNamespace, SqlaNamespaceManager):
    """``ext:sqla`` from zope.conf: the engine and the table Beaker's
    ``make_cache_table`` describes, made from ``url`` and ``table_name``
    (created if missing), instead of SQLAlchemy objects."""

    # Beaker reads it before setting it when neither lock_dir nor data_dir
    # is given; the write lock needs no directory.
    lock_dir = None

    def __init__(self, namespace, url, table_name='beaker_cache',
                 schema_name=None, sa_opts=None, **kw):
        self._init_dependencies()
        import sqlalchemy as sa
        options = dict(sa_opts or {}, **{'sa.url': url})
        engine = self.binds.get(
            url, lambda: sa.engine_from_config(options, 'sa.'))

        def make_table():
            table = make_cache_table(sa.MetaData(), table_name, schema_name)
            table.create(bind=engine, checkfirst=True)
            return table

        table = self.tables.get('%s:%s' % (engine.url, table_name),
                                make_table)
        super().__init__(namespace, engine, table, **kw)


# The namespace manager of each store type that replaces Beaker's own;
# the others are Beaker's (beaker.cache.clsmap).
NAMESPACE_CLASSES = {
    'file': FileSessionNamespace,
    'dbm': DBMSessionNamespace,
    'ext:memcached': MemcachedNamespaceManager,
    'ext:database': DatabaseSessionNamespace,
    'ext:sqla': SqlaSessionNamespace,
}
