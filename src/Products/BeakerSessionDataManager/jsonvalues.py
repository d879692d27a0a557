"""JSON for session records: ``session.data_serializer json`` and the
cookie store.

Beaker's ``JsonSerializer`` (whose records Beaker reads), plus ``bytes``:
stock sessions keep bytes, and add-ons put them there (Products.
PluggableAuthService keeps the CSRF token of its ZMI forms in the session
as bytes, so that without them no user could be managed in the ZMI).  A
bytes value is written as ``{"__bytes__": "<base64>"}`` and read back as
bytes.

JSON keeps string keys only: ``string_keys_error`` tells, before a record
is encoded, which key would silently come back as a string.
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
    if len(mapping) == 1 and isinstance(mapping.get(BYTES), str):
        try:
            return b64decode(mapping[BYTES], validate=True)
        except (binascii.Error, ValueError):
            pass
    return mapping


def dumps(value):
    """``value`` as JSON text, bytes included."""
    return json.dumps(value, default=_encode)


def string_keys_error(record):
    """Why JSON would change ``record``'s keys, or None.

    JSON keeps string keys only: ``json.dumps`` turns a number, a boolean
    or None used as a key into a string without a word, so that
    ``session[1]`` comes back as ``session['1']`` (and ``1`` and ``'1'``
    become one key).  The session's own keys are checked, and those of the
    dicts its values hold.
    """
    for key, value in record.items():
        if type(key) is not str:
            return 'the key %r (%s) cannot be encoded as JSON, which keeps ' \
                'string keys only' % (key, type(key).__name__)
        if type(value) not in SCALARS:
            try:
                found = _json_nested_key(value)
            except RecursionError:
                continue  # A cycle, which json.dumps reports, naming it.
            if found is not None:
                return 'the value of %r cannot be encoded as JSON: it holds ' \
                    'a dict with the key %r (%s), and JSON keeps string ' \
                    'keys only' % (key, found, type(found).__name__)
    return None


# Values that hold no dict (the common case, looked up without a call).
SCALARS = frozenset((str, int, float, bool, type(None)))


def _json_nested_key(value):
    """The first key not a string in the dicts ``value`` holds, or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                return key
            if type(item) not in SCALARS:
                found = _json_nested_key(item)
                if found is not None:
                    return found
    elif isinstance(value, (list, tuple)):
        for item in value:
            if type(item) not in SCALARS:
                found = _json_nested_key(item)
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
