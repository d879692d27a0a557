"""Session fixation defence: a visitor who logs in gets a new session id.

A session id known before the login (planted by an attacker, or seen on a
shared computer) must not reach the session afterwards.  The data stays.
"""
import logging

from Acquisition import aq_base
from zope.globalrequest import getRequest

from .interfaces import IBeakerSessionDataManager
from .interfaces import SessionStoreError


logger = logging.getLogger('Products.BeakerSessionDataManager')

MANAGER_ID = 'session_data_manager'


def find_manager(request):
    """The root ``session_data_manager`` if it is a Beaker one, else None."""
    for parent in request.get('PARENTS') or ():
        get_root = getattr(parent, 'getPhysicalRoot', None)
        if get_root is not None:
            root = get_root()
            break
    else:
        return None
    manager = getattr(aq_base(root), MANAGER_ID, None)
    if not IBeakerSessionDataManager.providedBy(manager):
        return None
    return getattr(root, MANAGER_ID)


def regenerate_session(request=None):
    """Give the browser's session a new id, keeping its data.

    For code that logs visitors in without Products.PluggableAuthService's
    login event.  Returns the new id, or None when the browser has no
    session (none is created) or the root manager is not a Beaker one.
    """
    if request is None:
        request = getRequest()
    manager = find_manager(request) if request is not None else None
    if manager is None:
        return None
    return manager.regenerateSessionId()


def user_logged_in(event):
    """Subscriber of PAS's ``IUserLoggedInEvent`` (Plone fires it).

    A login does not need the session, so it goes on while the store is
    down; the browser is told to drop its session cookie instead, so that
    it starts a new session rather than keep an id that may be planted.
    """
    request = getRequest()
    if request is None:
        request = getattr(event.principal, 'REQUEST', None)
    try:
        regenerate_session(request)
    except SessionStoreError:
        find_manager(request).getBrowserIdManager().flushBrowserIdCookie()
        logger.warning('Session store unavailable at login: the session '
                       'cookie is dropped instead of renamed.')
