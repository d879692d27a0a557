"""Write session changes when, and only when, the Zope transaction commits.

The writer joins the transaction the first time its session may need
writing.  It votes last: its vote merges the request's changes onto the
latest stored record, under the store's lock or with its compare-and-set
(``ISessionStore.merge``), so a store that cannot be written makes the
whole transaction fail instead of committing the ZODB without the session.

Data managers that vote after it (zope.sqlalchemy's, whose sort key is
``~sqlalchemy``, commits the database in its vote) can still fail the
transaction once the session is written: the writer then takes back its
changes, those that no other request has changed since, so that a retry
starts from the session as it was (see ``undo``).

A mutable value handed out (a list, say) may be changed in place, unseen:
for such a value the writer only asks the transaction to call it before the
commit, and joins then if the value did change.  A request that only reads
a list commits without the two-phase commit of a data manager.
"""
import logging
import time
from functools import partial

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


logger = logging.getLogger('Products.BeakerSessionDataManager')

_missing = object()
# SessionWriter._stored_record until a vote has written the session.
_not_stored = object()


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
        # What this transaction's vote wrote to the store: the record, or
        # None where it deleted the session.
        self._stored_record = _not_stored
        # (session id, record before, record after) of each of this
        # transaction's writes: the old id's record deleted after a rename,
        # then the session's.
        self._wrote = []

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

    def renamed(self, undo):
        """The session was renamed (a login) in the current transaction.

        The commit writes it under its new id and deletes the old id's
        record, also when a savepoint taken before the rename was rolled
        back: the transaction calls a writer that joined after that
        savepoint (as a rename makes it) to abort, and drops it; it joins
        again before the commit.  If the transaction aborts, or its commit
        fails, ``undo`` takes the rename back.
        """
        current = self.transaction_manager.get()
        current.addBeforeCommitHook(self.join)
        current.addAfterAbortHook(undo)
        current.addAfterCommitHook(
            lambda committed: None if committed else undo())

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
        self._stored_record, self._wrote = _not_stored, []

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        session = self.session
        now = time.time()
        if session._read_mutables:
            session._collect_mutations()
        if not session._needs_write():
            return

        def write(session_id, change):
            applied = []

            def apply(record):
                # A copy: change() may change the record it is given.
                before = None if record is None else dict(record)
                after = change(record)
                # A compare-and-set store may apply it again.
                applied[:] = [(session_id, before, after)]
                return after
            written = self.store.merge(session_id, apply)
            self._wrote.extend(applied)
            return written

        try:
            with zodb_connection(session._zodb_connection):
                if session._renamed_from is not None:
                    write(session._renamed_from, lambda record: None)
                self._stored_record = write(
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

    def tpc_finish(self, txn):
        if self._stored_record is not _not_stored:
            self.session._stored(self._stored_record)
        self._stored_record, self._wrote = _not_stored, []
        self._transaction = None

    def tpc_abort(self, txn):
        # We wrote (the old id's record deleted, say); the vote of this
        # writer, or of a data manager voting after it, failed.
        self._undo()
        self.session._rollback()
        self._stored_record, self._wrote = _not_stored, []
        self._transaction = None

    def _undo(self):
        """Take back the changes this transaction's vote wrote, the last
        first."""
        if getattr(self.store, 'writes_after_commit', False):
            return  # The cookie store: nothing was sent.
        session = self.session
        for session_id, before, after in reversed(self._wrote):
            try:
                with zodb_connection(session._zodb_connection):
                    self.store.merge(session_id, partial(
                        undo, before=before, after=after))
            except Exception as exc:
                # tpc_abort must not fail: the transaction is aborted
                # anyway.
                logger.error(
                    'The session %s... keeps the changes of a transaction '
                    'that failed after they were written to the %s: %s',
                    session_id[:8], self.store.name, describe(exc))

    def savepoint(self):
        return SessionSavepoint(self)


def same(first, second):
    """Whether two values are equal, false where they cannot tell."""
    if first is second:
        return True
    try:
        return bool(first == second)
    except Exception:
        return False


def undo(current, before, after):
    """``current``, the stored record, with what turned ``before`` into
    ``after`` taken back, key by key, where no other request has changed
    the key since (its change stays); None deletes the record."""
    if after is None:
        # The transaction deleted the session: back, unless another
        # request has written one since.
        return before if current is None else current
    if current is None:
        return None  # Deleted since: nothing of ours to take back.
    record = dict(current)
    before = before or {}
    for key in set(before) | set(after):
        old = before.get(key, _missing)
        new = after.get(key, _missing)
        if same(old, new) or not same(record.get(key, _missing), new):
            continue
        if old is _missing:
            del record[key]
        else:
            record[key] = old
    # The transaction made the session and nothing else wrote to it.
    return record or None


@implementer(IDataManagerSavepoint)
class SessionSavepoint:
    """Rolling back a savepoint rolls back the session's changes too."""

    def __init__(self, writer):
        self.writer = writer
        self.snapshot = writer.session._snapshot()

    def rollback(self):
        self.writer.session._restore(self.snapshot)
