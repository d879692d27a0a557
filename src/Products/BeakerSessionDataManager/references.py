"""ZODB objects in session values, pickled as references.

Stock sessions live in a ZODB: a content object put in a session stays
that object, and a later request finds its current state.  Pickled by
value, it would be a detached copy of the object and of everything
persistent under it (or fail, wrapped in acquisition).  So the session's
pickles name an object that a ZODB already holds by its database and
oid, and loading them looks it up in the request's ZODB connection.
Objects not yet in a ZODB are pickled whole, as before.

Where no connection is at hand (the console scripts), and for an object
the connection cannot find (gone since, after a pack; a database this
Zope does not have), a reference loads as a ``ZODBReference``, which
pickles back to the same reference: the rest of the session stays usable.
"""
import io
import pickle
from contextlib import contextmanager
from contextvars import ContextVar

from persistent import Persistent


_connection = ContextVar('zodb_connection', default=None)


@contextmanager
def zodb_connection(connection):
    """Load references through ``connection`` (a ZODB connection of the
    request, or None) in this block."""
    token = _connection.set(connection)
    try:
        yield
    finally:
        _connection.reset(token)


class ZODBReference:
    """A reference to an object that could not be looked up."""

    def __init__(self, reference):
        self.reference = reference

    def __eq__(self, other):
        return isinstance(other, ZODBReference) and \
            other.reference == self.reference

    def __hash__(self):
        return hash(self.reference)

    def __repr__(self):
        database_name, oid = self.reference
        return '<ZODBReference %s:0x%x>' % (
            database_name, int.from_bytes(oid, 'big'))


class ReferencePickler(pickle.Pickler):

    def persistent_id(self, obj):
        # True for an acquisition wrapper of a persistent object too.
        if isinstance(obj, Persistent):
            jar = obj._p_jar
            if jar is not None:
                return (jar.db().database_name, obj._p_oid)
        elif type(obj) is ZODBReference:
            return obj.reference
        return None


class ReferenceUnpickler(pickle.Unpickler):

    def persistent_load(self, reference):
        connection = _connection.get()
        if connection is not None:
            database_name, oid = reference
            try:
                return connection.get_connection(database_name).get(oid)
            except KeyError:  # POSKeyError, or no such database
                pass
        return ZODBReference(reference)


def dumps(value, protocol=pickle.HIGHEST_PROTOCOL):
    buffer = io.BytesIO()
    ReferencePickler(buffer, protocol).dump(value)
    return buffer.getvalue()


def loads(data):
    return ReferenceUnpickler(io.BytesIO(data)).load()
