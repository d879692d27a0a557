"""Session rows in Beaker's SQL table, read in one round trip.

The same table and rows as ``BeakerStore`` over this product's SQL
namespaces (``ext:database``, ``ext:sqla``), and the same merge: one
database transaction under the session's lock
(``namespaces.TransactionalSqlNamespace``).  Reads go through an engine of
their own, in autocommit mode and without the pool's ping: one ``SELECT``,
where the merge's engine sends a ping, the ``SELECT`` and a ``ROLLBACK``.
A connection the database dropped (a restart) fails its read once; the
pool then drops the connections it had and the read is sent again on a
new one.
"""
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
        import sqlalchemy as sa
        engine, table = self._read_engine()
        query = sa.select(table.c.data).where(table.c.namespace == session_id)
        try:
            row = select_one(engine, query)
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            row = select_one(engine, query)
        contents = row.data if row is not None else None
        raw = contents.get(RECORD_KEY) if isinstance(contents, dict) else None
        return self._live(self._decoded(raw))

    def _read_engine(self):
        """The engine for reads and the table, made at the first read; the
        merge's namespace makes the table if it is missing."""
        with self._reader_lock:
            if self._reader is None:
                import sqlalchemy as sa
                namespace = self._namespace('')
                options = dict(self.namespace_args.get('sa_opts') or {})
                options['sa.url'] = namespace.bind.url
                options['sa.pool_pre_ping'] = False
                self._reader = (sa.engine_from_config(
                    options, 'sa.', isolation_level='AUTOCOMMIT'),
                    namespace.table)
            return self._reader


def select_one(engine, query):
    with engine.connect() as connection:
        return connection.execute(query).first()
