"""Count publication attempts and their failures in a benchmarked Zope.

Zope retries a request that raised a ConflictError without logging it, so
the log cannot tell how many attempts failed.  These subscribers see every
attempt (``IPubStart``) and every failed one (``IPubFailure``); the view
``@@bench-counters`` on the root answers the counts as JSON.  bench.py puts
this directory on the instance's PYTHONPATH and loads the package with a
ZCML slug in the instance's ``etc/package-includes``: nothing is installed.
"""
import json
import threading
from collections import Counter

from ZODB.POSException import ConflictError


_lock = threading.Lock()
_counts = Counter()


def _count(*names):
    with _lock:
        for name in names:
            _counts[name] += 1


def started(event):
    _count('attempts')


def failed(event):
    exc_type = event.exc_info[0]
    names = ['failures', 'failure:' + exc_type.__name__]
    if issubclass(exc_type, ConflictError):
        names.append('conflicts')
    if event.retry:
        names.append('retried')
    _count(*names)


def snapshot():
    with _lock:
        return dict(_counts)


class CountersView:
    """``@@bench-counters``: the counts so far, as JSON."""

    def __init__(self, context, request):
        self.context = context
        self.request = request

    def __call__(self):
        self.request.response.setHeader('Content-Type', 'application/json')
        return json.dumps(snapshot())
