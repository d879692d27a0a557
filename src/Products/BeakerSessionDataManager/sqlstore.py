"""Session rows in Beaker's SQL table, read in one round trip.

The same table and rows as ``BeakerStore`` over this product's SQL
namespaces (``ext:database``, ``ext:sqla``), and the same merge: one
database transaction under the session's lock
(``namespaces.TransactionalSqlNamespace``).  Reads go through an engine of
their own, in autocommit mode and without the pool's ping: one ``SELECT``,
where the merge's engine sends a ping, ``BEGIN``, the ``SELECT`` and a
``ROLLBACK``.  A connection the database dropped (a restart) fails its
read once; the pool then drops the connections it had and the read is
sent again on a new one.
"""
import pickle
import threading

from .store import RECORD_KEY
from .store import BeakerStore


class SqlStore(BeakerStore):
    """Beaker's SQL rows: reads in autocommit, merges locked."""

    def __init__(self, namespace_class, namespace_args, **kw):
        super().__init__(namespace_class, namespace_args, **kw)
        self._reader = None
        self._reader_lock = threading.Lock()

    def load(self, session_id):
        """See ISessionStore."""
        data = self.reader().data(session_id)
        if data is None:
            return None
        # What the column's PickleType would do, and Beaker's namespace.
        contents = pickle.loads(bytes(data))
        raw = contents.get(RECORD_KEY) if isinstance(contents, dict) else None
        return self._live(self._decoded(raw))

    def reader(self):
        """The reader, made at the first read; the merge's namespace makes
        the table if it is missing."""
        if self._reader is not None:
            return self._reader
        with self._reader_lock:
            if self._reader is None:
                import sqlalchemy as sa
                namespace = self._namespace('')
                options = dict(self.namespace_args.get('sa_opts') or {})
                options['sa.url'] = namespace.bind.url
                options['sa.pool_pre_ping'] = False
                engine = sa.engine_from_config(
                    options, 'sa.', isolation_level='AUTOCOMMIT')
                self._reader = Reader(engine, namespace.table)
            return self._reader


class Reader:
    """Reads the ``data`` column of a session's row: the statement is
    compiled once and sent on the engine's DBAPI connections, without
    SQLAlchemy's execution machinery, which costs more than the query."""

    def __init__(self, engine, table):
        import sqlalchemy as sa
        compiled = sa.select(table.c.data).where(
            table.c.namespace == sa.bindparam('session_id')).compile(
                dialect=engine.dialect)
        self.engine = engine
        self.sql = compiled.string
        self.positional = compiled.positional
        self.errors = engine.dialect.loaded_dbapi.Error

    def data(self, session_id):
        """The pickled data of the session's row, or None."""
        params = ((session_id,) if self.positional
                  else {'session_id': session_id})
        for retry in (False, True):
            connection = self.engine.raw_connection()
            cursor = None
            try:
                cursor = connection.cursor()
                cursor.execute(self.sql, params)
                row = cursor.fetchone()
                cursor.close()
            except self.errors as exc:
                if retry or not self.engine.dialect.is_disconnect(
                        exc, connection.dbapi_connection, cursor):
                    raise
                # Dropped by the database (a restart), and so are the
                # pool's others: the read goes on a new connection.
                connection.invalidate(exc)
                self.engine.dispose()
                continue
            finally:
                connection.close()
            return None if row is None else row[0]
