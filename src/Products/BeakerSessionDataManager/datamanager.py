"""Write session changes when, and only when, the Zope transaction commits.

The writer joins the transaction the first time its session may need
writing.  It votes last: its vote merges the request's changes onto the
latest stored record under the store's lock, so a store that cannot be
written makes the whole transaction fail instead of committing the ZODB
without the session.

A mutable value handed out (a list, say) may be changed in place, unseen:
for such a value the writer only asks the transaction to call it before the
commit, and joins then if the value did change.  A request that only reads
a list commits without the two-phase commit of a data manager.
"""
import time

import transaction
from transaction.interfaces import IDataManager
from transaction.interfaces import IDataManagerSavepoint
from ZODB.POSException import ConflictError
from zope.interface import implementer

from .interfaces import SessionStoreError
from .interfaces import SessionValueError
from .outages import describe
from .outages import outage_log
from .references import zodb_connection


@implementer(IDataManager)
class SessionWriter:
    """Transaction data manager for one session of one request."""

    def __init__(self, session, store,
                 transaction_manager=transaction.manager):
        self.session = session
        self.store = store
        self.transaction_manager = transaction_manager
        self._transaction = None
        self._watched = None
        self._written = None
        session._writer = self

    def join(self):
        current = self.transaction_manager.get()
        if self._transaction is not current:
            current.join(self)
            self._transaction = current

    def watch(self):
        """Join the current transaction before it commits if the values
        handed out have changed by then."""
        current = self.transaction_manager.get()
        if self._transaction is not current and self._watched is not current:
            current.addBeforeCommitHook(self._before_commit)
            self._watched = current

    def _before_commit(self):
        self._watched = None
        if self.session._mutated_keys():
            self.join()

    def sortKey(self):
        # '~' sorts after the ZODB connections' keys: we vote last.
        return '~beaker-session:%s' % self.session.getContainerKey()

    def abort(self, txn):
        if self._transaction is None:
            # Already committed: a transaction with after-commit hooks
            # aborts every resource after running them.
            return
        self.session._rollback()
        self._transaction = None

    def tpc_begin(self, txn):
        self._written = None

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        session = self.session
        now = time.time()
        if session._read_mutables:
            session._collect_mutations()
        if not session._needs_write():
            return
        try:
            with zodb_connection(session._zodb_connection):
                self._written = self.store.merge(
                    session.getContainerKey(),
                    lambda record: session._apply_to(record, now))
        except (ConflictError, SessionValueError):
            raise
        except Exception as exc:
            outage_log.failed(self.store.name, 'write to', exc)
            raise SessionStoreError(
                'The session could not be saved to the %s: %s'
                % (self.store.name, describe(exc))) from exc
        outage_log.succeeded(self.store.name)
        self._written = self._written or {}

    def tpc_finish(self, txn):
        if self._written is not None:
            self.session._stored(self._written or None)
        self._written = None
        self._transaction = None

    def tpc_abort(self, txn):
        self.session._rollback()
        self._written = None
        self._transaction = None

    def savepoint(self):
        return SessionSavepoint(self)


@implementer(IDataManagerSavepoint)
class SessionSavepoint:
    """Rolling back a savepoint rolls back the session's changes too."""

    def __init__(self, writer):
        self.writer = writer
        self.snapshot = writer.session._snapshot()

    def rollback(self):
        self.writer.session._restore(self.snapshot)
