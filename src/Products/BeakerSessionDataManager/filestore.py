"""Beaker's session files, without Beaker's namespace objects.

The same files as ``BeakerStore`` over Beaker's ``FileNamespaceManager``
(``<data_dir>/container_file/a/ab/<session id>.cache``: a pickled dict
whose ``session`` key holds the encoded record), and the same locks
(``flock`` on ``<lock_dir>/<h>/<hh>/<sha1 of the session id>.lock``), so
that Beaker's own sessions and middleware can share the directories:

- a write takes the session's lock as Beaker does, reads the file, and
  writes the whole new file to a temporary file renamed over the old one,
  as Beaker does;
- a read takes no lock at all: since files are only ever replaced whole,
  it finds the old file or the new one, never part of either.

That saves a request Beaker's namespace object and, on a read, the lock
file's open, lock, unlock and close.  Beaker renames and uses flock only
on POSIX systems: elsewhere the configuration keeps ``BeakerStore``.
"""
import fcntl
import os
import pickle
from contextlib import contextmanager
from hashlib import sha1

from .store import RECORD_KEY
from .store import BeakerStore


def encoded_path(root, name, extension):
    """``beaker.util.encoded_path(root, [name], extension, depth=3)``,
    without creating its directories."""
    name = os.path.basename(name).replace('.', '')
    return os.path.join(root, name[:1], name[:2], name + extension)


class FileStore(BeakerStore):
    """Beaker's session files: reads without a lock, writes under
    Beaker's lock."""

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
        raw = self._contents(self.path(session_id)).get(RECORD_KEY)
        return self._live_record(raw)

    def merge(self, session_id, apply):
        """See ISessionStore."""
        path = self.path(session_id)
        with self._locked(session_id):
            contents = self._contents(path)
            # An expired record is no session: the merge starts afresh.
            record = apply(self._live_record(contents.get(RECORD_KEY)))
            if record is not None:
                contents[RECORD_KEY] = self.encode(record)
            elif RECORD_KEY in contents:
                del contents[RECORD_KEY]
            else:
                return None  # Nothing to delete: no file to write.
            replace(path, pickle.dumps(contents))
        return record

    # -- helpers --

    @staticmethod
    def _contents(path):
        """The dict a session file holds; empty if there is none."""
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, PermissionError):
            # What Beaker's do_open makes of ENOENT and EACCES: nothing.
            return {}
        try:
            contents = pickle.loads(read_whole(descriptor))
        finally:
            os.close(descriptor)
        return contents if isinstance(contents, dict) else {}

    @contextmanager
    def _locked(self, session_id):
        """Beaker's exclusive lock of the session (FileSynchronizer)."""
        descriptor = create(self.lock_path(session_id), os.O_WRONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)


# Files are read and written with os.read and os.write: Python's file
# objects add system calls (fstat, ioctl, lseek), and each one lets the
# request's thread lose the GIL to another one.
CHUNK = 1 << 16


def read_whole(descriptor):
    """All of an open file."""
    chunks = []
    while True:
        chunk = os.read(descriptor, CHUNK)
        if not chunk:
            return b''.join(chunks)
        chunks.append(chunk)


def create(path, flags):
    """Open ``path``, made if missing, and its directories too."""
    try:
        return os.open(path, flags | os.O_CREAT, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags | os.O_CREAT, 0o666)


def replace(path, data):
    """Write ``path`` whole, as ``beaker.util.safe_write`` does: to
    ``path.temp`` (one writer at a time: the caller holds the lock), then
    renamed over ``path``."""
    temporary = path + '.temp'
    descriptor = create(temporary, os.O_WRONLY | os.O_TRUNC)
    try:
        try:
            # Blocks allocated now, not when written back: replacing a file
            # on ext4 (auto_da_alloc) otherwise first forces the new one's
            # delayed allocation, half the cost of a write there.
            os.posix_fallocate(descriptor, 0, len(data))
        except OSError:
            pass  # Not for this filesystem: the write still is.
        unwritten = memoryview(data)
        while unwritten:
            unwritten = unwritten[os.write(descriptor, unwritten):]
    finally:
        os.close(descriptor)
    os.rename(temporary, path)
