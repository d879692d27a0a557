"""Contracts of the Beaker session data manager and its session objects."""
from Products.Sessions.interfaces import IMutableSessionDataManager
from Products.Sessions.interfaces import SessionDataManagerErr
from Products.Transience.interfaces import IDictionaryLike
from Products.Transience.interfaces import IItemWithId
from Products.Transience.interfaces import ITransient
from Products.Transience.interfaces import ITTWDictionary
from zExceptions import HTTPServiceUnavailable
from zope.interface import Attribute
from zope.interface import Interface


class ConfigurationError(SessionDataManagerErr):
    """The Beaker session configuration is missing or invalid.

    o The message names the offending ``<product-config beaker>`` option.
    """


class SessionStoreError(SessionDataManagerErr, HTTPServiceUnavailable):
    """The session store could not be read or written.

    o Raised to the code that needs the session; pages that never touch
      the session keep working.

    o Published as ``503 Service Unavailable``: the outage is temporary,
      and nothing was half-written.

    o Visitors get a short page that does not show the store's address
      (the message, with it, goes to the log).
    """

    body = ('<!DOCTYPE html>\n<html><head><title>Service Unavailable'
            '</title></head><body><h1>Service Unavailable</h1>\n<p>The '
            'session store is unavailable at the moment. Please try again '
            'in a little while.</p></body></html>\n')


class SessionValueError(SessionDataManagerErr, TypeError):
    """The session cannot be stored as it is: a bug to fix, not an outage.

    o Raised when the transaction commits, so the request fails (HTTP
      500) instead of losing the write; nothing is written.

    o A TypeError, as what stock sessions raise when a value cannot be
      pickled.
    """


class SessionTooLargeError(SessionValueError):
    """The session does not fit in its cookie (``session.type cookie``),
    or in a memcached item.

    o Nothing is sent: the browser keeps its previous session cookie, the
      store its previous record.
    """


class IBeakerSessionDataManager(IMutableSessionDataManager):
    """A session data manager that keeps session data in a Beaker store.

    Add-ons use it exactly like the stock session data manager.  What the
    stock interfaces leave implicit:

    o Nothing is read from the store until code asks for the session
      (``request.SESSION`` is lazy); a request that never asks costs nothing.

    o Changes are written once, when the Zope transaction commits, and
      only the keys this request changed: concurrent requests of one
      browser that change different keys do not overwrite each other
      in a server-side store.  (In the cookie store, and under Beaker's
      SessionMiddleware, which save whole sessions, the last one wins.)
      A request that raises (transaction aborted) writes nothing.
    """

    def regenerateSessionId():
        """Give the current session a new id, keeping its data.

        o Call it when a visitor's privileges change (login) so that a
          session id planted before the login is useless afterwards.
          With Products.PluggableAuthService installed (Plone), it is
          called on its ``IUserLoggedInEvent``.

        o The record under the old id is deleted when the transaction
          commits; a new cookie is sent.  If the transaction aborts,
          the old id stays valid and nothing is written.

        o A browser id without session data gets a new id too; a session
          started in this request keeps its id (nobody else knows it).

        o Returns the new browser id, or None if the browser has no
          session (none is created).

        o Permission required: Access session data
        """


class IBeakerSessionData(IItemWithId, ITransient, IDictionaryLike,
                         ITTWDictionary):
    """A session as add-ons see it: the Transience transient object API.

    o ``session[missing]`` raises KeyError, ``get(k)`` returns None,
      ``keys()``, ``values()`` and ``items()`` return lists, as stock.

    o Values are pickled (or JSON-encoded) into the store at commit; a
      value mutated in place (a list appended to, a dict updated) is
      detected and written too.  Setting ``_p_changed = 1``, as stock
      code does, is accepted and marks every value read in this request
      as changed.

    o Like a dict, and unlike stock, it also supports ``len()``,
      iteration over keys, ``setdefault()`` and ``pop()``.  It is always
      true in a boolean context, as stock sessions are.
    """

    def getContainerKey():
        """Return the browser id this session is stored under."""


class ISessionStore(Interface):
    """Where session records live (one Beaker namespace per session)."""

    name = Attribute('Short description of the store for messages.')

    def load(session_id):
        """Return the record stored for ``session_id`` as a dict, or None."""

    def merge(session_id, apply):
        """Read the latest record, pass it to ``apply``, write the result.

        o ``apply(record_or_None)`` returns the new record, or None to
          delete it.

        o Runs under the store's lock for ``session_id``, or as a
          compare-and-set that calls ``apply`` again on the newer record
          when another writer came first, so that concurrent writers of
          one session do not lose each other's changes.  A
          compare-and-set may start from the record this thread read
          last, or from a guess that there is none (a new session), and
          calls ``apply`` again on the stored record if that was wrong:
          ``apply`` must have no other effect than its result, and only
          the result for the stored record is written.
        """

    def delete(session_id):
        """Remove the record of ``session_id`` if there is one."""
