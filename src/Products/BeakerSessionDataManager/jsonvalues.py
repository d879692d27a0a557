"""JSON for session records: ``session.data_serializer json`` and the
cookie store.

Beaker's ``JsonSerializer`` (whose records Beaker reads), plus ``bytes``:
stock sessions keep bytes, and add-ons put them there (Products.
PluggableAuthService keeps the CSRF token of its ZMI forms in the session
as bytes, so that without them no user could be managed in the ZMI).  A
bytes value is written as ``{"__bytes__": "<base64>"}`` and read back as
bytes.
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


class SessionJsonSerializer(JsonSerializer):
    """Beaker's JSON serializer, keeping bytes as bytes."""

    def dumps(self, data):
        return zlib.compress(dumps(data).encode('utf-8'))

    def loads(self, data_string):
        return json.loads(zlib.decompress(data_string).decode('utf-8'),
                          object_hook=_decode)
