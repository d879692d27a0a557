"""Log a session store outage once per interval, not once per request.

While a store is down every request that needs the session fails; a
traceback or an error line for each of them would bury the log (and the
disk) under copies of one message.  The first failure is logged as an
error; later ones within ``INTERVAL`` seconds are only counted, and the
count goes into the next error line.  When the store answers again, one
line says so.
"""
import logging
import threading
import time


logger = logging.getLogger('Products.BeakerSessionDataManager')

INTERVAL = 60


class ThrottledLog:
    """Per kind of line: when the next may be logged, and how many were
    not logged since the last."""

    def __init__(self, interval=INTERVAL, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._next_report = {}
        self._unreported = {}

    def _due(self, kind):
        """How many lines of ``kind`` went unlogged if this one is to be
        logged, else None (counted).  Called with ``_lock`` held."""
        now = self.clock()
        if now < self._next_report.get(kind, now):
            self._unreported[kind] += 1
            return None
        unreported = self._unreported.get(kind, 0)
        self._next_report[kind] = now + self.interval
        self._unreported[kind] = 0
        return unreported


class OutageLog(ThrottledLog):
    """Per store: an error line per interval, and one when it is back."""

    def __init__(self, interval=INTERVAL, clock=time.monotonic):
        super().__init__(interval, clock)
        self._down = set()

    def failed(self, store_name, action, exc):
        """The store ``store_name`` could not ``action`` (read, write)."""
        with self._lock:
            self._down.add(store_name)
            unreported = self._due(store_name)
        if unreported is None:
            return
        logger.error(
            'Session store unavailable: could not %s the %s: %s%s',
            action, store_name, describe(exc),
            ' (and %d more failures since the last message; the next '
            'message comes in %d seconds at the earliest)'
            % (unreported, self.interval) if unreported else
            ' (further failures are counted, not logged, for %d seconds)'
            % self.interval)

    def succeeded(self, store_name):
        """The store answered: say so once if it was down."""
        if store_name not in self._down:
            return  # The common case, without taking the lock.
        with self._lock:
            if store_name not in self._down:
                return
            self._down.discard(store_name)
            unreported = self._unreported.get(store_name, 0)
            self._unreported[store_name] = 0
        logger.info('The %s answers again%s.', store_name,
                    ' (%d failures since the last message)' % unreported
                    if unreported else '')


class WarningLog(ThrottledLog):
    """A warning of each kind once per interval, not once per request.

    For what a request cannot tell from an attack or an old cookie, but an
    administrator should hear of (instances sharing a store with different
    settings): every request of every browser would repeat it.
    """

    def __init__(self, interval=INTERVAL, clock=time.monotonic):
        super().__init__(interval, clock)
        # Warnings of each kind since the process started, for the Status
        # tab.
        self.totals = {}

    def warn(self, kind, message, *args):
        with self._lock:
            self.totals[kind] = self.totals.get(kind, 0) + 1
            unreported = self._due(kind)
        if unreported is None:
            return
        logger.warning(
            message + (' (%d more since the last message; the next comes in '
                       '%d seconds at the earliest)' % (
                           unreported, self.interval) if unreported else
                       ' (further ones are counted, not logged, for %d '
                       'seconds)' % self.interval), *args)


def describe(exc, limit=300):
    """The exception's type and the first line of its message: SQL
    drivers append the statement and its parameters (session data)."""
    lines = str(exc).strip().splitlines()
    text = '%s: %s' % (type(exc).__name__, lines[0] if lines else '')
    return text if len(text) <= limit else text[:limit - 3] + '...'


outage_log = OutageLog()
warning_log = WarningLog()
