"""Session rows in Beaker's SQL table, read in one round trip.

The same table and rows as ``BeakerStore`` over this product's SQL
namespaces (``ext:database``, ``ext:sqla``), and the same lock: one
database transaction under the session's lock
(``namespaces.TransactionalSqlNamespace``).  Reads go through an engine of
their own, in autocommit mode and without the pool's ping: one ``SELECT``,
where the merge's engine sends a ping, ``BEGIN``, the ``SELECT`` and a
``ROLLBACK``.  A connection the database dropped (a restart) fails its
read once; the pool then drops the connections it had and the read is
sent again on a new one.

On PostgreSQL through psycopg2, which sends several statements as one
message, a merge goes on that engine too, in two round trips instead of
seven: ``BEGIN``, the lock's wait limit, the lock and the ``SELECT`` of
the row in one message, the write and ``COMMIT`` in another.  No ping
first: a connection found dropped is replaced and the merge sent again
(applying the same changes twice gives the same record).
"""
import pickle
import threading
import weakref
from datetime import datetime

from . import namespaces
from .store import DAMAGED
from .store import RECORD_KEY
from .store import BeakerStore
from .store import pickled_dict


# Rows that ``remove_rows_if`` (the cleanup) examines in one database
# transaction: the locks of their sessions are held for the few
# milliseconds it takes.
BATCH_SIZE = 100
# Deadlocks in a row after which a merge gives up (see
# ``_merge_again_after_deadlocks``).
MAX_DEADLOCKS = 5


def row_contents(data):
    """The dict a row's ``data`` holds (what the column's PickleType and
    Beaker's namespace load); empty if it is no dict or cannot be
    unpickled (a row of Python 2, or of a class since removed): no
    session, not an error of the store."""
    return pickled_dict(bytes(data)) or {}


class SqlStore(BeakerStore):
    """Beaker's SQL rows: reads in autocommit, merges locked."""

    def __init__(self, namespace_class, namespace_args, **kw):
        super().__init__(namespace_class, namespace_args, **kw)
        self._statements = None
        self._statements_lock = threading.Lock()

    def load(self, session_id):
        """See ISessionStore."""
        reader, _ = self.statements()
        data = reader.data(session_id)
        if data is None:
            return None
        return self._live_record(row_contents(data).get(RECORD_KEY))

    def merge(self, session_id, apply):
        """See ISessionStore."""
        _, writer = self.statements()
        if writer is None:
            return self._merge_again_after_deadlocks(session_id, apply)

        def change(contents):
            # Other keys of the row, which Beaker could have written, stay.
            record = apply(self._live_record(contents.get(RECORD_KEY)))
            if record is None:
                contents.pop(RECORD_KEY, None)
            else:
                contents[RECORD_KEY] = self.encode(record)
            return contents, record

        return writer.merge(session_id, change)

    def _merge_again_after_deadlocks(self, session_id, apply):
        """Beaker's namespace merge, done again when the database chose it
        as the victim of a deadlock: on MySQL and MariaDB two merges of a
        session that has no row yet both lock the gap where it goes, and
        the second to insert it is rolled back.  The other one has
        written it, and the merge applies its changes to that row."""
        import sqlalchemy as sa
        for attempt in range(1, MAX_DEADLOCKS + 1):
            try:
                return super().merge(session_id, apply)
            except sa.exc.OperationalError as exc:
                if attempt == MAX_DEADLOCKS or not namespaces.is_deadlock(
                        exc.orig):
                    raise

    def remove_rows_if(self, session_ids, condition):
        """Remove the rows of ``session_ids`` for which ``condition(
        session_id, record, written)`` is true, as ``remove_if`` removes
        one, in one database transaction: the rows are read under the locks
        the merges take (PostgreSQL's advisory locks, SQLite's ``BEGIN
        IMMEDIATE``, ``SELECT ... FOR UPDATE`` elsewhere) and deleted
        together.  On PostgreSQL a session whose lock a writer holds is
        left at once, not waited for: it is in use.  Returns the ids
        removed and those left busy."""
        import sqlalchemy as sa
        namespace = self._namespace('')
        table = namespace.table
        session_ids = list(session_ids)
        busy = set()
        removed = []
        query = sa.select(
            table.c.namespace, table.c.accessed,
            # Unpickled here as plain data, not by the column's PickleType.
            sa.type_coerce(table.c.data, sa.LargeBinary)).where(
                table.c.namespace.in_(session_ids))
        with namespace.bind.connect() as connection, \
                namespaces.lock_wait_reported('the sessions were'):
            transaction = connection.begin()
            try:
                dialect = connection.dialect.name
                if dialect == 'sqlite':
                    namespaces.begin_immediate(connection)
                else:
                    namespaces.bound_lock_wait(connection)
                if dialect == 'postgresql':
                    busy = self._try_advisory_locks(
                        connection, table, session_ids)
                elif dialect != 'sqlite':
                    query = query.with_for_update()
                for session_id, accessed, data in connection.execute(query):
                    if session_id in busy:
                        continue
                    contents = {} if data is None else pickled_dict(
                        bytes(data))
                    if contents is None:
                        record = DAMAGED
                    elif set(contents) - {RECORD_KEY}:
                        continue  # Not (only) a session: left alone.
                    else:
                        raw = contents.get(RECORD_KEY)
                        record = self._examined(raw) if raw else None
                    if condition(session_id, record, accessed.timestamp()):
                        removed.append(session_id)
                if removed:
                    connection.execute(table.delete().where(
                        table.c.namespace.in_(removed)))
                transaction.commit()
            except BaseException:
                transaction.rollback()
                raise
        return set(removed), busy

    @staticmethod
    def _try_advisory_locks(connection, table, session_ids):
        """Take the advisory locks of ``session_ids`` that nobody holds,
        for the transaction; return the ids whose lock is held."""
        import sqlalchemy as sa
        keys = {namespaces.advisory_lock_key(table, session_id): session_id
                for session_id in session_ids}
        locked = connection.execute(sa.text(
            'SELECT key FROM unnest(CAST(:keys AS bigint[])) AS key '
            'WHERE pg_try_advisory_xact_lock(key)'),
            {'keys': list(keys)}).scalars().all()
        return set(session_ids) - {keys[key] for key in locked}

    def statements(self):
        """(the reader, the writer or None where the driver cannot take
        it), made at the first read or write; the merge's namespace makes
        the table if it is missing."""
        if self._statements is not None:
            return self._statements
        with self._statements_lock:
            if self._statements is None:
                import sqlalchemy as sa
                namespace = self._namespace('')
                options = dict(self.namespace_args.get('sa_opts') or {})
                options['sa.url'] = namespace.bind.url
                options['sa.pool_pre_ping'] = False
                engine = sa.engine_from_config(
                    options, 'sa.', isolation_level='AUTOCOMMIT')
                writer = (PostgreSQLWriter(engine, namespace.table)
                          if engine.dialect.driver == 'psycopg2' else None)
                self._statements = (Reader(engine, namespace.table), writer)
                # The pool's connections close when the store goes (one a
                # new configuration replaced), instead of being left to
                # the garbage collector, which Python 3.13 warns of for
                # SQLite's (ResourceWarning: unclosed database).  Not at
                # exit: as before.
                weakref.finalize(self, engine.dispose).atexit = False
            return self._statements


class Statements:
    """Statements sent on the DBAPI connections of an engine, without
    SQLAlchemy's execution machinery, which costs more than the query."""

    def __init__(self, engine, table):
        self.engine = engine
        self.table = table
        self.errors = engine.dialect.loaded_dbapi.Error

    def run(self, work, *args):
        """``work(cursor, *args)`` on a pool connection.  A connection the
        database dropped (a restart), and with it the pool's others, is
        replaced, and ``work`` done again once on a new one."""
        for retry in (False, True):
            connection = self.engine.raw_connection()
            cursor = None
            try:
                cursor = connection.cursor()
                return work(cursor, *args)
            except self.errors as exc:
                if retry or not self.engine.dialect.is_disconnect(
                        exc, connection.dbapi_connection, cursor):
                    raise
                connection.invalidate(exc)
                self.engine.dispose()
            finally:
                self.release(connection, cursor)

    def release(self, connection, cursor):
        try:
            if cursor is not None:
                cursor.close()
        except self.errors:
            pass  # Its connection was dropped, and invalidated.
        finally:
            connection.close()


class Reader(Statements):
    """Reads the ``data`` column of a session's row with a statement
    compiled once."""

    def __init__(self, engine, table):
        super().__init__(engine, table)
        import sqlalchemy as sa
        compiled = sa.select(table.c.data).where(
            table.c.namespace == sa.bindparam('session_id')).compile(
                dialect=engine.dialect)
        self.sql = compiled.string
        self.positional = compiled.positional

    def data(self, session_id):
        """The pickled data of the session's row, or None."""
        return self.run(self._read, (session_id,) if self.positional
                        else {'session_id': session_id})

    def _read(self, cursor, params):
        cursor.execute(self.sql, params)
        row = cursor.fetchone()
        return None if row is None else row[0]


class PostgreSQLWriter(Statements):
    """Merges on PostgreSQL through psycopg2, in two messages.

    The connections are in autocommit mode, so psycopg2 sends no ``BEGIN``
    of its own: the first message opens the transaction, bounds the wait
    for the lock (``namespaces.LOCK_WAIT``), takes the session's advisory
    lock (the key of ``TransactionalSqlNamespace``, which the cleanup
    takes) and reads the row; the second writes it (or deletes it) and
    commits.  psycopg2 puts the values into the statements itself, which
    is what lets a message hold several.  Sending a merge again after a
    dropped connection is harmless: applying the same changes twice gives
    the same record.
    """

    def __init__(self, engine, table):
        super().__init__(engine, table)
        name = engine.dialect.identifier_preparer.format_table(table)
        self.lock_and_read = (
            'BEGIN; SET LOCAL lock_timeout = %(wait)s; '
            'SELECT pg_advisory_xact_lock(%(key)s); '
            'SELECT data FROM ' + name + ' WHERE namespace = %(namespace)s')
        # Update, or insert if the row is gone: one statement for both
        # tables (ext:database's has an id column of its own).
        self.write = (
            'WITH updated AS (UPDATE ' + name + ' SET data = %(data)s, '
            'accessed = %(now)s WHERE namespace = %(namespace)s RETURNING 1) '
            'INSERT INTO ' + name + ' (namespace, accessed, created, data) '
            'SELECT %(namespace)s, %(now)s, %(now)s, %(data)s '
            'WHERE NOT EXISTS (SELECT 1 FROM updated); COMMIT')
        self.delete = ('DELETE FROM ' + name +
                       ' WHERE namespace = %(namespace)s; COMMIT')

    def merge(self, session_id, change):
        """Pass the row's contents (a dict) to ``change``, which returns
        the new contents (written, or the row deleted if empty) and what
        ``merge`` returns."""
        try:
            return self.run(self._merge, session_id, change)
        except self.errors as exc:
            if not namespaces.is_lock_timeout(exc):
                raise
            raise namespaces.LockTimeout(
                'the session was locked by another writer for too long: %s'
                % exc) from exc

    def _merge(self, cursor, session_id, change):
        cursor.execute(self.lock_and_read, {
            'wait': '%dms' % (namespaces.LOCK_WAIT * 1000),
            'key': namespaces.advisory_lock_key(self.table, session_id),
            'namespace': session_id})
        row = cursor.fetchone()
        contents, result = change(
            row_contents(row[0]) if row is not None else {})
        if contents:
            cursor.execute(self.write, {
                'namespace': session_id, 'now': datetime.now(),
                'data': pickle.dumps(contents, pickle.HIGHEST_PROTOCOL)})
        elif row is not None:
            cursor.execute(self.delete, {'namespace': session_id})
        else:
            cursor.execute('COMMIT')
        return result

    def release(self, connection, cursor):
        """Back to the pool only outside a transaction: after an error the
        server may still hold one open (and the lock with it)."""
        from psycopg2.extensions import TRANSACTION_STATUS_IDLE
        try:
            if cursor is not None:
                cursor.close()
            dbapi_connection = connection.dbapi_connection
            if dbapi_connection is not None and not dbapi_connection.closed \
                    and dbapi_connection.get_transaction_status() != \
                    TRANSACTION_STATUS_IDLE:
                dbapi_connection.cursor().execute('ROLLBACK')
        except Exception as exc:
            connection.invalidate(exc)
        finally:
            connection.close()
