"""JSON for session records: ``session.data_serializer json`` and the
cookie store.

Beaker's ``JsonSerializer`` (whose records Beaker reads), plus ``bytes``:
stock sessions keep bytes, and add-ons put them there (Products.
PluggableAuthService keeps the CSRF token of its ZMI forms in the session
as bytes, so that without them no user could be managed in the ZMI).  A
bytes value is written as ``{"__bytes__": "<base64>"}`` and read back as
bytes.

``json_change_error`` tells, before a record is encoded, what JSON would
silently change: a key that is not a string, a dict of the bytes' form.
"""
import binascii
import json
import zlib
from base64 import b64decode
from base64 import b64encode

from beaker.util import JsonSerializer


BYTES = '__bytes__'


def _encode(value):
    if isinstance(value, bytes):
        return {BYTES: b64encode(value).decode('ascii')}
    raise TypeError(
        'Object of type %s is not JSON serializable' % type(value).__name__)


def _decode(mapping):
    data = _encoded_bytes(mapping)
    return mapping if data is None else data


def _encoded_bytes(mapping):
    """The bytes ``mapping`` is the encoding of, or None."""
    if len(mapping) == 1 and isinstance(mapping.get(BYTES), str):
        try:
            return b64decode(mapping[BYTES], validate=True)
        except (binascii.Error, ValueError):
            pass
    return None


def dumps(value):
    """``value`` as JSON text, bytes included."""
    return json.dumps(value, default=_encode)


def json_change_error(record):
    """Why JSON would not give ``record`` back as it is, or None.

    JSON keeps string keys only: ``json.dumps`` turns a number, a boolean
    or None used as a key into a string without a word, so that
    ``session[1]`` comes back as ``session['1']`` (and ``1`` and ``'1'``
    become one key).  And a dict that is just ``{"__bytes__": BASE64}``
    would come back as the bytes it looks like.  The session's own keys
    are checked, and the dicts its values hold.
    """
    for key, value in record.items():
        if type(key) is not str:
            return 'the key %r (%s) cannot be encoded as JSON, which keeps ' \
                'string keys only (it would come back as a string)' % (
                    key, type(key).__name__)
        try:
            problem = _nested_change(value)
        except RecursionError:
            continue  # A cycle, which json.dumps reports, naming it.
        if problem is not None:
            return 'the value of %r cannot be encoded as JSON: it holds %s' \
                % (key, problem)
    return None


# Values that hold no dict.
SCALARS = frozenset((str, int, float, bool, type(None)))


def _nested_change(value):
    """What in the dicts ``value`` holds JSON would change, or None."""
    if type(value) in SCALARS:
        return None
    if isinstance(value, dict):
        if _encoded_bytes(value) is not None:
            return 'a dict {%r: base64}, the form bytes are written in ' \
                '(it would come back as bytes)' % BYTES
        for key in value:
            if type(key) is not str:
                return 'a dict with the key %r (%s), and JSON keeps string ' \
                    'keys only (it would come back as a string)' % (
                        key, type(key).__name__)
        items = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return None
    for item in items:
        found = _nested_change(item)
        if found is not None:
            return found
    return None


class SessionJsonSerializer(JsonSerializer):
    """Beaker's JSON serializer, keeping bytes as bytes."""

    def dumps(self, data):
        return zlib.compress(dumps(data).encode('utf-8'))

    def loads(self, data_string):
        return json.loads(zlib.decompress(data_string).decode('utf-8'),
                          object_hook=_decode)
