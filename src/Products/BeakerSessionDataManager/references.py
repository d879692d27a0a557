"""ZODB objects in session values, pickled as references.

Stock sessions live in a ZODB: a content object put in a session stays
that object, and a later request finds its current state.  Pickled by
value, it would be a detached copy of the object and of everything
persistent under it (or fail, wrapped in acquisition).  So the session's
pickles name an object that a ZODB already holds by its database, oid
and class, and loading them looks it up in the request's ZODB connection.
Objects not yet in a ZODB are pickled whole, as before.  The class guards
against instances with ZODBs of their own sharing a store: the oid of an
object of one may be another object in the other's.

Where no connection is at hand (the console scripts), and for an object
the connection cannot find (gone since, after a pack; a database this
Zope does not have), a reference loads as a ``ZODBReference``, which
pickles back to the same reference: the rest of the session stays usable.
"""
import io
import marshal
import pickle
from contextvars import ContextVar

from Acquisition import aq_base
from persistent import Persistent


_connection = ContextVar('zodb_connection', default=None)


class zodb_connection:
    """Load references through ``connection`` (a ZODB connection of the
    request, or None) in this block (a class: a generator costs more on
    every request)."""

    __slots__ = ('connection', 'token')

    def __init__(self, connection):
        self.connection = connection

    def __enter__(self):
        self.token = _connection.set(self.connection)

    def __exit__(self, *exc_info):
        _connection.reset(self.token)


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
        database_name, oid = self.reference[:2]
        return '<ZODBReference %s:0x%x>' % (
            database_name, int.from_bytes(oid, 'big'))


def class_name(obj):
    cls = aq_base(obj).__class__
    return '%s.%s' % (cls.__module__, cls.__qualname__)


class ReferencePickler(pickle.Pickler):

    def persistent_id(self, obj):
        # True for an acquisition wrapper of a persistent object too.
        if isinstance(obj, Persistent):
            jar = obj._p_jar
            if jar is not None:
                return (jar.db().database_name, obj._p_oid, class_name(obj))
        elif type(obj) is ZODBReference:
            return obj.reference
        return None


class ReferenceUnpickler(pickle.Unpickler):

    def persistent_load(self, reference):
        connection = _connection.get()
        if connection is not None:
            database_name, oid = reference[:2]
            try:
                obj = connection.get_connection(database_name).get(oid)
            except KeyError:  # POSKeyError, or no such database
                pass
            else:
                # Not another object of a ZODB that is not the one the
                # reference was made in (its class is known without
                # loading it).
                if reference[2:] in ((), (class_name(obj),)):
                    return obj
        return ZODBReference(reference)


# A pickler or unpickler object costs three times a ``pickle.dumps`` or
# ``loads`` of a small session: the usual values go without.

def dumps(value, protocol=pickle.HIGHEST_PROTOCOL):
    try:
        # Builtin types only (marshal takes no others): no ZODB object.
        marshal.dumps(value, 2)
    except ValueError:
        buffer = io.BytesIO()
        ReferencePickler(buffer, protocol).dump(value)
        return buffer.getvalue()
    return pickle.dumps(value, protocol)


def loads(data):
    # A reference is a BINPERSID (``Q``) opcode; protocol 0 has PERSID,
    # which pickle.loads refuses.
    if b'Q' not in data:
        try:
            return pickle.loads(data)
        except pickle.UnpicklingError:
            pass
    return ReferenceUnpickler(io.BytesIO(data)).load()
