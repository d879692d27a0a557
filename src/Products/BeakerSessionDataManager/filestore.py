"""Beaker's session files, without Beaker's namespace objects.

The same files as ``BeakerStore`` over Beaker's ``FileNamespaceManager``
(``<data_dir>/container_file/a/ab/<session id>.cache``: a pickled dict
whose ``session`` key holds the encoded record), and the same locks
(``flock`` on ``<lock_dir>/<h>/<hh>/<sha1 of the session id>.lock``), so
that Beaker's own sessions and middleware can share the directories:

- a write takes the session's lock as Beaker does, then rewrites the
  session file in place while it holds an exclusive ``flock`` on the file
  itself: a tenth of the CPU of writing a new file and renaming it over
  the old one, as Beaker does (ext4 makes a rename force the new file's
  data out);
- a read takes a shared ``flock`` on the session file only, not Beaker's
  lock: it waits for a write of this store to finish, never for Beaker's
  lock holders, and finds Beaker's own writes whole anyway, as Beaker
  renames new files over the old ones.

Beaker's readers take Beaker's lock, which this store's writers hold.
A crash in the middle of a write can leave that one file unreadable: its
session is then gone, as an unreadable record is for Beaker.  Beaker
renames and uses flock only on POSIX systems: elsewhere the configuration
keeps ``BeakerStore``.
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
    """Beaker's session files, rewritten in place under Beaker's lock."""

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
        except (FileNotFoundError, PermissionError):
            # What Beaker's do_open makes of ENOENT and EACCES: nothing.
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH)
            contents = unpickled(read_whole(descriptor))
        finally:
            os.close(descriptor)  # and with it the flock
        return self._live_record(contents.get(RECORD_KEY))

    def merge(self, session_id, apply):
        """See ISessionStore."""
        path = self.path(session_id)
        with self._locked(session_id):
            descriptor = create(path, os.O_RDWR)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)  # for our readers
                old = read_whole(descriptor)
                contents = unpickled(old)
                # An expired record is no session: the merge starts afresh.
                record = apply(self._live_record(contents.get(RECORD_KEY)))
                if record is not None:
                    contents[RECORD_KEY] = self.encode(record)
                elif RECORD_KEY in contents:
                    del contents[RECORD_KEY]
                elif not old:
                    # Nothing to delete: no file to leave behind.
                    os.remove(path)
                    return None
                rewrite(descriptor, pickle.dumps(contents), len(old))
            finally:
                os.close(descriptor)
        return record

    # -- helpers --

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


# Files are read and written with os.read and os.pwrite: Python's file
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


def unpickled(data):
    """The dict a session file holds; empty for none, and for one that
    cannot be read (a write cut short by a crash)."""
    try:
        contents = pickle.loads(data)
    except Exception:
        return {}
    return contents if isinstance(contents, dict) else {}


def rewrite(descriptor, data, old_length):
    """Write ``data`` over the open file's ``old_length`` bytes."""
    unwritten = memoryview(data)
    offset = 0
    while unwritten:
        written = os.pwrite(descriptor, unwritten, offset)
        offset += written
        unwritten = unwritten[written:]
    if len(data) < old_length:
        os.ftruncate(descriptor, len(data))
