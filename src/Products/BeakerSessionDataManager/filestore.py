"""Beaker's session files, without Beaker's namespace objects.

The same files as ``BeakerStore`` over Beaker's ``FileNamespaceManager``
(``<data_dir>/container_file/a/ab/<session id>.cache``: a pickled dict
whose ``session`` key holds the encoded record), and the same locks
(``flock`` on ``<lock_dir>/<h>/<hh>/<sha1 of the session id>.lock``), so
that Beaker's own sessions and middleware can share the directories:

- a write takes the session's lock as Beaker does, and an exclusive
  ``flock`` on the session file itself; a file of at most one memory page
  it rewrites in place, a third of the CPU of writing a new file and
  renaming it over the old one, as Beaker does (ext4 makes the rename
  force the new file's data out), which it does for larger files;
- a read takes a shared ``flock`` on the session file only, not Beaker's
  lock: it waits for a write of this store to finish, never for Beaker's
  lock holders, and finds Beaker's own writes whole anyway, as Beaker
  renames new files over the old ones.

Beaker's readers take Beaker's lock, which this store's writers hold.
Linux copies a write of at most a page, at the start of a file, into the
page cache in one step, which no signal cuts short: a writer killed in
the middle leaves the old file or the new one.  Beaker renames and uses
flock only on POSIX systems: elsewhere the configuration keeps
``BeakerStore``.
"""
import fcntl
import mmap
import os
import pickle
import sys
import time
from contextlib import contextmanager
from functools import partial
from hashlib import sha1

from . import namespaces
from .store import RECORD_KEY
from .store import BeakerStore
from .store import pickled_dict


# The largest session file rewritten in place (see above); elsewhere than
# on Linux, none.
IN_PLACE_LIMIT = mmap.PAGESIZE if sys.platform.startswith('linux') else 0


def encoded_path(root, name, extension):
    """``beaker.util.encoded_path(root, [name], extension, depth=3)``,
    without creating its directories."""
    name = os.path.basename(name).replace('.', '')
    return os.path.join(root, name[:1], name[:2], name + extension)


class FileStore(BeakerStore):
    """Beaker's session files, written under Beaker's lock and a lock on
    the file."""

    def __init__(self, namespace_class, namespace_args, **kw):
        super().__init__(namespace_class, namespace_args, **kw)
        # FileNamespaceManager's own defaults.
        self.file_dir = (self.namespace_args.get('file_dir')
                         or self.data_dir + '/container_file')
        self.lock_dir = (self.namespace_args.get('lock_dir')
                         or self.data_dir + '/container_file_lock')

    def path(self, session_id):
        """The file of ``session_id`` (FileNamespaceManager.file)."""
        return encoded_path(self.file_dir, session_id, '.cache')

    def lock_path(self, session_id):
        """The lock file of ``session_id``, FileSynchronizer's filename
        for the namespace's access lock."""
        return encoded_path(
            self.lock_dir, sha1(session_id.encode('utf-8')).hexdigest(),
            '.lock')

    # -- ISessionStore --

    def load(self, session_id):
        """See ISessionStore."""
        try:
            descriptor = os.open(self.path(session_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        # A file this user may not read (EACCES) is an error, although
        # Beaker makes nothing of it: the session would look empty, and a
        # write fail.
        try:
            flock(descriptor, fcntl.LOCK_SH)
            # Empty for a file a crash cut short: no session.
            contents = pickled_dict(read_whole(descriptor)) or {}
        finally:
            unlock_and_close(descriptor)
        return self._live_record(contents.get(RECORD_KEY))

    def merge(self, session_id, apply):
        """See ISessionStore."""
        path = self.path(session_id)
        with self._session_lock(session_id):
            descriptor, writable = locked_session_file(path)
            try:
                old = b'' if descriptor is None else read_whole(descriptor)
                contents = pickled_dict(old) or {}
                # An expired record is no session: the merge starts afresh.
                record = apply(self._live_record(contents.get(RECORD_KEY)))
                if record is not None:
                    contents[RECORD_KEY] = self.encode(record)
                elif RECORD_KEY in contents:
                    del contents[RECORD_KEY]
                elif descriptor is None:
                    return None  # Nothing to delete: no file to write.
                data = pickle.dumps(contents)
                if writable and len(data) <= IN_PLACE_LIMIT:
                    rewrite(descriptor, data, len(old))
                else:
                    replace(path, data)
            finally:
                if descriptor is not None:
                    unlock_and_close(descriptor)
        return record

    # -- helpers --

    @contextmanager
    def _session_lock(self, session_id):
        """Beaker's exclusive lock of the session (FileSynchronizer).

        The cleanup removes the lock file of a session it removes, holding
        it: a writer that was waiting for that file then holds a lock
        nobody else takes, and takes the one at the path instead.
        """
        path = self.lock_path(session_id)
        descriptor = locked_file(path, partial(create, path, os.O_WRONLY))
        try:
            yield
        finally:
            unlock_and_close(descriptor)


# Files are read and written with os.read and os.pwrite: Python's file
# objects add system calls (fstat, ioctl, lseek), and each one lets the
# request's thread lose the GIL to another one.
CHUNK = 1 << 16


def read_whole(descriptor):
    """All of an open regular file: a read that answers less than it was
    asked for is at the end, and the one read of a session file is its
    only system call."""
    chunks = []
    while True:
        chunk = os.read(descriptor, CHUNK)
        chunks.append(chunk)
        if len(chunk) < CHUNK:
            return b''.join(chunks)


def create(path, flags):
    """Open ``path``, made if missing, and its directories too."""
    try:
        return os.open(path, flags | os.O_CREAT, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags | os.O_CREAT, 0o666)


def same_file(descriptor, path):
    """Whether ``path`` still names the open file."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_ino, named.st_dev) == (opened.st_ino, opened.st_dev)


def flock(descriptor, operation):
    """``fcntl.flock``, waiting at most ``namespaces.LOCK_WAIT`` seconds.

    Locks are held for the microseconds of a write; a holder that keeps
    one (a process stopped with SIGSTOP or ^Z, a cleanup in a debugger)
    would otherwise hold every request of the session, and once they took
    all threads, the whole site.  Uncontended, this is one system call, as
    a blocking flock is; contended, it polls.
    """
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    deadline = time.monotonic() + namespaces.LOCK_WAIT
    delay = 0.0001
    while True:
        time.sleep(delay)
        try:
            fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise namespaces.LockTimeout(
                    'the session was locked by another writer for too '
                    'long (%s seconds)' % namespaces.LOCK_WAIT) from None
        delay = min(delay * 1.5, 0.001)


def locked_file(path, open_file):
    """``open_file()``, the file at ``path``, under an exclusive flock.

    A file renamed over or removed while this waited for its flock is
    nobody's lock and no session any more: the one at the path now is
    opened and locked instead.
    """
    while True:
        descriptor = open_file()
        try:
            flock(descriptor, fcntl.LOCK_EX)
        except BaseException:
            os.close(descriptor)
            raise
        if same_file(descriptor, path):
            return descriptor
        unlock_and_close(descriptor)


def locked_session_file(path):
    """The session file at ``path`` under an exclusive flock, and whether
    it can be rewritten in place; (None, False) if there is none."""
    try:
        try:
            return locked_file(path, partial(os.open, path, os.O_RDWR)), True
        except PermissionError:
            # Another user's file, which this one may only replace.
            return locked_file(
                path, partial(os.open, path, os.O_RDONLY)), False
    except FileNotFoundError:
        return None, False


def unlock_and_close(descriptor):
    # Unlocked first: a process forked meanwhile holds the file too.
    try:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def rewrite(descriptor, data, old_length):
    """Write ``data`` over the open file's ``old_length`` bytes."""
    unwritten = memoryview(data)
    offset = 0
    while unwritten:
        written = os.pwrite(descriptor, unwritten, offset)
        offset += written
        unwritten = unwritten[written:]
    if len(data) < old_length:
        # Killed before this, the writer leaves the end of the old file
        # after the new one, which unpickling ignores.
        os.ftruncate(descriptor, len(data))


def replace(path, data):
    """Write ``path`` whole, as ``beaker.util.safe_write`` does: to
    ``path.temp`` (one writer at a time: the caller holds the lock), then
    renamed over ``path``."""
    temporary = path + '.temp'
    descriptor = create(temporary, os.O_WRONLY | os.O_TRUNC)
    try:
        try:
            try:
                # Blocks allocated now, not when written back: replacing a
                # file on ext4 (auto_da_alloc) otherwise first forces the
                # new one's delayed allocation, half the cost of a write
                # there.
                os.posix_fallocate(descriptor, 0, len(data))
            except OSError:
                pass  # Not for this filesystem: the write still is.
            rewrite(descriptor, data, 0)
        finally:
            os.close(descriptor)
        os.rename(temporary, path)
    except BaseException:
        # A full disk, say: what was written of the new file would keep
        # its space until the cleanup; the old file stays as it was.
        try:
            os.remove(temporary)
        except OSError:
            pass
        raise
