"""Remove expired sessions from the stores Beaker never cleans up.

Beaker deletes nothing from file, dbm and SQL stores: every session ever
started stays there.  ``Cleanup`` walks the store, picks the sessions whose
file or row has not been written for longer than the timeout plus a grace
period, and removes each one only after checking again, under the lock the
site's own writers take (``BeakerStore.remove_if``; on SQL stores a batch of
rows in one transaction, ``SqlStore.remove_rows_if``), that its
``_accessed_time`` is that old too.  A session used meanwhile is kept, so
the cleanup is safe while the site serves.
"""
import fcntl
import hashlib
import json
import os
import re
import time
from datetime import datetime

from .browserid import SESSION_ID
from .namespaces import LockTimeout
from .session import ACCESSED
from .sqlstore import BATCH_SIZE
from .store import DAMAGED
from .store import TTL_MARGIN
from .store import UNREADABLE
from .store import pickled_dict


# Files as Beaker's file and dbm namespace managers name them with
# digest_filenames off: <id>.cache, or <id>.dbm plus the files of dbm.dumb
# (.dat, .dir, .bak) or of the other dbm modules.
SESSION_FILE = re.compile(
    r'([0-9a-f]{32})\.(?:cache|dbm(?:\.(?:db|dat|dir|pag|bak))?)\Z').match
# What beaker.util.safe_write leaves behind when a writer dies mid-write.
TEMP_FILE = re.compile(r'[0-9a-f]{32}\.cache\.temp\Z').match
# Beaker's lock files are named by the SHA-1 of what they lock.
LOCK_FILE = re.compile(r'([0-9a-f]{40})\.lock\Z').match
MARKER_FILE = '.last-cleanup'
MARKER_ROW = 'beaker-sessions:last-cleanup'
PAGE_SIZE = 1000
# Give up when the store fails this many sessions in a row.
MAX_ERRORS_IN_A_ROW = 20


def layout_for(configuration):
    """Where the configured store keeps its sessions; None for the stores
    that need no cleanup (Redis and memcached expire records themselves;
    memory dies with its process)."""
    store = configuration.store
    if configuration.type == 'file':
        return FilesLayout(store, 'file')
    if configuration.type == 'dbm':
        return FilesLayout(store, 'dbm')
    if configuration.type in ('ext:database', 'ext:sqla'):
        return SQLLayout(store)
    return None


def walk(root):
    """The files two directories below ``root``, where Beaker's
    ``encoded_path`` puts them."""
    for first in subdirectories(root):
        for second in subdirectories(first.path):
            with os.scandir(second.path) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        yield entry


def subdirectories(path):
    try:
        with os.scandir(path) as entries:
            return [entry for entry in entries
                    if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def lock_name(session_id):
    """The name Beaker's FileSynchronizer gives the lock of a session."""
    return hashlib.sha1(session_id.encode('utf-8')).hexdigest()


def remove_unused_lock(path):
    """Remove the lock file at ``path`` unless somebody holds it."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        os.remove(path)
        return True
    finally:
        os.close(descriptor)


class FilesLayout:
    """Sessions in files (file store) or dbm files (dbm store)."""

    # Each file is locked and removed on its own.
    batch_size = 1

    def __init__(self, store, kind):
        options = store.namespace_args
        data_dir = store.data_dir
        self.store = store
        # Beaker's defaults for data_dir, see beaker.container.
        self.root = options.get(kind + '_dir') or os.path.join(
            data_dir, 'container_' + kind)
        self.lock_dir = options.get('lock_dir') or os.path.join(
            data_dir, 'container_%s_lock' % kind)
        self.marker = os.path.join(data_dir or self.root, MARKER_FILE)
        # Session id: when its files were last written, as candidates()
        # found them; sweep() keeps the locks of those it did not remove.
        self._last_written = {}
        self._temp_files = []

    def count(self):
        return len({match.group(1) for match in (
            SESSION_FILE(entry.name) for entry in walk(self.root)) if match})

    def candidates(self, cutoff):
        """How many sessions were last written before ``cutoff``, and
        their ids."""
        written = self._last_written = {}
        self._temp_files = []
        for entry in walk(self.root):
            match = SESSION_FILE(entry.name)
            if match:
                session_id = match.group(1)
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue  # removed meanwhile
                written[session_id] = max(mtime, written.get(session_id, 0))
            elif TEMP_FILE(entry.name):
                self._temp_files.append(entry.path)
        ids = sorted(session_id for session_id, mtime in written.items()
                     if mtime < cutoff)
        return len(ids), iter(ids)

    def sweep(self, cutoff, removed, dry_run):
        """Remove what dead writers and removed sessions left behind:
        half-written temp files and lock files nobody holds, both older
        than ``cutoff``.  Returns how many."""
        count = 0
        for path in self._temp_files:
            if self._older(path, cutoff):
                count += dry_run or self._remove(path)
        kept = {lock_name(session_id) for session_id in self._last_written
                if session_id not in removed}
        for entry in walk(self.lock_dir):
            match = LOCK_FILE(entry.name)
            if match and match.group(1) not in kept \
                    and self._older(entry.path, cutoff):
                count += dry_run or remove_unused_lock(entry.path)
        return count

    @staticmethod
    def _older(path, cutoff):
        try:
            return os.stat(path).st_mtime < cutoff
        except OSError:
            return False

    @staticmethod
    def _remove(path):
        try:
            os.remove(path)
            return True
        except OSError:
            return False

    def record_cleanup(self, summary):
        temp = '%s.%s' % (self.marker, os.getpid())
        with open(temp, 'w') as f:
            json.dump(summary, f)
        os.replace(temp, self.marker)

    def last_cleanup(self):
        try:
            with open(self.marker) as f:
                return float(json.load(f)['time'])
        except (OSError, ValueError, KeyError, TypeError):
            return None


class SQLLayout:
    """Sessions as rows of Beaker's ``beaker_cache`` table (ext:database,
    ext:sqla): namespace, accessed, created, data."""

    # Rows examined and removed in one transaction (``SqlStore.
    # remove_rows_if``).
    batch_size = BATCH_SIZE

    def __init__(self, store):
        import sqlalchemy
        self.sa = sqlalchemy
        # A namespace manager knows the engine and the table (and makes
        # the table if it is missing, as on the site's first session).
        namespace = store._namespace(MARKER_ROW)
        self.bind = namespace.bind
        self.table = namespace.table

    def count(self):
        sa, table = self.sa, self.table
        with self.bind.connect() as connection:
            return connection.execute(
                sa.select(sa.func.count()).select_from(table).where(
                    table.c.namespace != MARKER_ROW)).scalar()

    def candidates(self, cutoff):
        sa, table = self.sa, self.table
        # ``accessed`` is the local time of the writer, as Beaker sets it.
        old = table.c.accessed < datetime.fromtimestamp(cutoff)
        with self.bind.connect() as connection:
            total = connection.execute(
                sa.select(sa.func.count()).select_from(table).where(
                    old)).scalar()
        return total, self._pages(old)

    def _pages(self, old):
        """The session ids of the matching rows, a page at a time, so that
        the rows removed meanwhile do not shift the pages."""
        sa, table = self.sa, self.table
        last = ''
        while True:
            with self.bind.connect() as connection:
                names = connection.execute(
                    sa.select(table.c.namespace)
                    .where(old, table.c.namespace > last)
                    .order_by(table.c.namespace)
                    .limit(PAGE_SIZE)).scalars().all()
            if not names:
                return
            yield from filter(SESSION_ID, names)
            last = names[-1]

    def sweep(self, cutoff, removed, dry_run):
        """Nothing is left behind: SQL stores lock in the database."""
        return 0

    def record_cleanup(self, summary):
        table = self.table
        now = datetime.now()
        mine = table.c.namespace == MARKER_ROW
        with self.bind.begin() as connection:
            if not connection.execute(table.update().where(mine).values(
                    data=summary, accessed=now)).rowcount:
                connection.execute(table.insert().values(
                    namespace=MARKER_ROW, data=summary, accessed=now,
                    created=now))

    def last_cleanup(self):
        sa, table = self.sa, self.table
        with self.bind.connect() as connection:
            # Unpickled here as plain data, not by the column's PickleType.
            data = connection.execute(sa.select(
                sa.type_coerce(table.c.data, sa.LargeBinary)).where(
                    table.c.namespace == MARKER_ROW)).scalar()
        try:
            return float(pickled_dict(data)['time'])
        except (TypeError, KeyError, ValueError):
            return None


def chunks(iterable, size):
    """Lists of ``size`` items of ``iterable`` (the last one shorter)."""
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Report:
    """What a cleanup found and did, by kind of record."""

    def __init__(self, store_name, dry_run):
        self.store_name = store_name
        self.dry_run = dry_run
        self.examined = 0
        self.removed = {}
        self.kept = {}
        self.removed_ids = set()
        self.leftovers = 0
        self.errors = 0
        self.first_error = None
        self.seconds = None

    def count(self, kind, removed):
        counts = self.removed if removed else self.kept
        counts[kind] = counts.get(kind, 0) + 1

    def summary(self):
        return {'time': time.time(), 'seconds': self.seconds,
                'removed': self.removed, 'kept': self.kept,
                'leftovers': self.leftovers, 'errors': self.errors}


class Cleanup:
    """Removes the expired sessions of one store.

    A session is expired when both its ``_accessed_time`` and the last
    write of its file or row lie more than timeout + ``grace`` seconds in
    the past; the grace period lets a request that read the session just
    before the deadline still write it.  Records that hold no session
    (left behind by invalidated sessions, or by reads of unknown ids on
    dbm) go when their file or row is that old, and so do session files
    and rows that cannot be unpickled at all (a write cut short by a
    crash, a row of Python 2).
    Records that cannot be decoded go only with ``remove_unreadable``: with
    a wrong ``encrypt_key`` or serializer in the cleanup's configuration
    every session would look unreadable.
    """

    def __init__(self, configuration, layout, dry_run=False,
                 remove_unreadable=False, grace=TTL_MARGIN,
                 on_progress=None, on_remove=None):
        self.store = configuration.store
        self.layout = layout
        self.age = configuration.timeout + grace
        self.dry_run = dry_run
        self.remove_unreadable = remove_unreadable
        self.on_progress = on_progress or (lambda done, total: None)
        self.on_remove = on_remove or (lambda session_id, kind: None)
        self.report = Report(self.store.name, dry_run)

    def run(self):
        report = self.report
        started = time.time()
        cutoff = started - self.age
        total, candidates = self.layout.candidates(cutoff)
        self.on_progress(0, total)
        errors_in_a_row = 0
        batched = hasattr(self.store, 'remove_rows_if')
        for chunk in chunks(candidates, self.layout.batch_size):
            if batched and self._clean_rows(chunk):
                errors_in_a_row = 0
                report.examined += len(chunk)
                self.on_progress(report.examined, total)
                continue
            # One at a time: the store has no batches, or the batch
            # failed (one bad row need not keep the others).
            for session_id in chunk:
                try:
                    self._clean(session_id)
                    errors_in_a_row = 0
                except Exception as exc:
                    report.errors += 1
                    errors_in_a_row += 1
                    if report.first_error is None:
                        report.first_error = '%s: %s: %s' % (
                            session_id, type(exc).__name__, exc)
                    if errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                        raise
                report.examined += 1
                self.on_progress(report.examined, total)
        report.leftovers = self.layout.sweep(
            cutoff, report.removed_ids, self.dry_run)
        report.seconds = time.time() - started
        if not self.dry_run:
            self.layout.record_cleanup(report.summary())
        return report

    def _clean(self, session_id):
        verdict = []

        def expired(record, written):
            kind, remove = self.judge(record, written)
            verdict.append((kind, remove))
            return remove and not self.dry_run

        try:
            self.store.remove_if(session_id, expired)
        except LockTimeout:
            # Somebody keeps writing it: in use.
            self.report.count('busy', False)
            return
        if not verdict:
            return  # gone meanwhile, or not a session namespace
        kind, remove = verdict[0]
        self.report.count(kind, remove)
        if remove:
            self.report.removed_ids.add(session_id)
            self.on_remove(session_id, kind)

    def _clean_rows(self, session_ids):
        """Clean up the rows of ``session_ids`` in one transaction; false
        if that failed (nothing was removed)."""
        verdicts = {}

        def expired(session_id, record, written):
            kind, remove = self.judge(record, written)
            verdicts[session_id] = (kind, remove)
            return remove and not self.dry_run

        try:
            _, busy = self.store.remove_rows_if(session_ids, expired)
        except LockTimeout:
            # Another writer held them all that long: in use.
            busy, verdicts = set(session_ids), {}
        except Exception:
            return False
        for session_id in session_ids:
            if session_id in busy:
                self.report.count('busy', False)
            elif session_id in verdicts:
                kind, remove = verdicts[session_id]
                self.report.count(kind, remove)
                if remove:
                    self.report.removed_ids.add(session_id)
                    self.on_remove(session_id, kind)
        return True

    def judge(self, record, written):
        """The kind of the record, and whether it may go (called under the
        store's lock)."""
        deadline = time.time() - self.age
        old = written < deadline
        if record is UNREADABLE:
            return 'unreadable', old and self.remove_unreadable
        if record is DAMAGED:
            return 'damaged', old
        if record is None:
            return 'empty', old
        accessed = record.get(ACCESSED)
        if not isinstance(accessed, (int, float)):
            # Never expires when read either.
            return 'undated', False
        if old and accessed < deadline:
            return 'expired', True
        return 'live', False
