"""The Beaker session data manager, a drop-in for ``session_data_manager``.

(The module keeps the name it had in 2.x so that managers already stored in
a ZODB load as instances of this class.)
"""
import html
import logging
import time

from AccessControl.class_init import InitializeClass
from AccessControl.Permissions import access_contents_information
from AccessControl.Permissions import delete_objects
from AccessControl.Permissions import view_management_screens
from AccessControl.requestmethod import requestmethod
from AccessControl.SecurityInfo import ClassSecurityInfo
from AccessControl.SecurityManagement import getSecurityManager
from Acquisition import aq_inner
from Acquisition import aq_parent
from OFS.ObjectManager import checkValidId
from OFS.SimpleItem import SimpleItem
from Products.PageTemplates.PageTemplateFile import PageTemplateFile
from Products.Sessions.SessionDataManager import SessionDataManagerTraverser
from zExceptions import BadRequest
from ZODB.POSException import ConflictError
from zope.globalrequest import getRequest
from zope.interface import implementer
from ZPublisher.BeforeTraverse import queryBeforeTraverse
from ZPublisher.BeforeTraverse import registerBeforeTraverse
from ZPublisher.BeforeTraverse import unregisterBeforeTraverse

from . import config
from .browserid import SESSION_ID
from .browserid import BeakerBrowserIdManager
from .interfaces import IBeakerSessionDataManager
from .interfaces import SessionDataManagerErr
from .interfaces import SessionStoreError
from .outages import describe
from .outages import outage_log
from .permissions import access_session_data
from .permissions import access_user_session_data
from .permissions import change_session_data_managers
from .references import zodb_connection
from .session import WRITE_GRANULARITY
from .session import BeakerSessionData
from .store import MiddlewareStore
from .zmi import SessionDataManagerZMI


logger = logging.getLogger('Products.BeakerSessionDataManager')

# Where a request keeps the sessions it has loaded, per manager.
REQUEST_STATE_KEY = '_beaker_session_data_managers'
# Names under which the traversal hook has been registered (2.x used the
# second one).
HOOK_NAMES = ('BeakerSessionDataManager', 'SessionDataManager')
MIDDLEWARE_ENVIRON_KEY = 'beaker.session'


class RequestSessions:
    """The sessions one request has loaded from one manager's store."""

    def __init__(self):
        self.looked_up = False
        self.current = None
        self.by_key = {}


@implementer(IBeakerSessionDataManager)
class BeakerSessionDataManager(SessionDataManagerZMI, SimpleItem):
    """Session data manager keeping session data in a Beaker store."""

    meta_type = 'Beaker Session Data Manager'
    zmi_icon = 'far fa-clock'
    title = ''
    _requestSessionName = 'SESSION'

    manage_options = (SessionDataManagerZMI.manage_options
                      + SimpleItem.manage_options[1:])

    security = ClassSecurityInfo()
    security.declareObjectPublic()
    security.setDefaultAccess({'meta_type': 1, 'id': 1, 'title': 1,
                               'zmi_icon': 1, 'title_or_id': 1})
    security.setPermissionDefault(change_session_data_managers, ['Manager'])
    security.setPermissionDefault(view_management_screens, ['Manager'])
    security.setPermissionDefault(access_contents_information,
                                  ['Manager', 'Anonymous'])
    security.setPermissionDefault(access_user_session_data, ['Manager'])
    security.setPermissionDefault(access_session_data,
                                  ['Manager', 'Anonymous'])

    def __init__(self, id, title='', requestName='SESSION'):
        self.id = id
        self.title = title
        self._requestSessionName = requestName

    #
    #   ISessionDataManager implementation
    #

    @security.protected(access_session_data)
    def getSessionData(self, create=1):
        """See ISessionDataManager: without ``create``, still a session if
        the browser has an id, as with stock sessions."""
        session = self._browser_session(create=create)
        if session is None:
            return None
        if session._id_only:
            session._keep()
        return session.__of__(self)

    @security.protected(access_session_data)
    def hasSessionData(self):
        """See ISessionDataManager: answered without creating a session."""
        session = self._browser_session(create=0)
        if session is None:
            return 0  # No browser id: stock's answer.
        return not session._id_only

    @security.protected(access_user_session_data)
    def getSessionDataByKey(self, key):
        """See ISessionDataManager."""
        request = self._request()
        sessions = self._request_sessions(request)
        current = self._existing_session()
        if current is not None and current.getContainerKey() == key:
            return current.__of__(self)
        if not isinstance(key, str) or not SESSION_ID(key):
            return None  # Not an id this product makes: not in the store.
        if key not in sessions.by_key:
            sessions.by_key[key] = self._load(request, key)
        session = sessions.by_key[key]
        if session is None or session._id_only:
            return None
        return session.__of__(self)

    @security.protected(access_user_session_data)
    def clearSessionData(self):
        """See IMutableSessionDataManager."""
        session = self._existing_session()
        if session is not None:
            session.clear()

    @security.protected(access_contents_information)
    def getBrowserIdManager(self):
        """See ISessionDataManager: answers from the Beaker cookie."""
        return BeakerBrowserIdManager().__of__(self)

    @security.protected(access_session_data)
    def regenerateSessionId(self):
        """See IBeakerSessionDataManager."""
        # Browser ids without data too: a planted one would otherwise
        # still be shared once the first data is stored.
        session = self._browser_session(create=0)
        if session is None:
            return None
        if session._is_new:
            # Made in this request: nobody else can know the id.
            return session.getContainerKey()
        request = self._request()
        middleware = self._middleware_store(request)
        if middleware is not None:
            # The middleware owns the id and the cookie: Beaker renames the
            # session, which is then saved under its new id.
            session._rename(middleware.regenerate_id(), rewrite=False)
            return session.getContainerKey()
        # Renamed in place (``request.SESSION`` holds it too); the record
        # under the old id is deleted at commit, and an abort takes the
        # rename and the new cookie back.
        cookie = self._configuration().cookie
        new_id = cookie.new_id()
        session._rename(new_id, take_back_cookie=cookie.send(
            request.response, new_id))
        return new_id

    #
    #   Traversal hook: request.SESSION
    #

    def manage_afterAdd(self, item, container):
        """Publish the session lazily as request.SESSION."""
        self.updateTraversalData(self._requestSessionName)

    def manage_beforeDelete(self, item, container):
        """Remove the traversal hook with the manager."""
        self.updateTraversalData(None)

    @security.private
    def updateTraversalData(self, requestSessionName=None):
        """Replace the hook publishing the session as
        ``request[requestSessionName]``; without a name, remove it."""
        parent = aq_parent(aq_inner(self))
        if getattr(self, '_hasTraversalHook', None):
            for name in HOOK_NAMES:
                unregisterBeforeTraverse(parent, name)
            del self._hasTraversalHook
        self._requestSessionName = requestSessionName
        if requestSessionName:
            hook = SessionDataManagerTraverser(requestSessionName, self.id)
            registerBeforeTraverse(parent, hook, HOOK_NAMES[0], 50)
            self._hasTraversalHook = 1

    #
    #   Helper methods
    #

    def _configuration(self):
        return config.get_configuration()

    def _request(self):
        request = getattr(self, 'REQUEST', None)
        if request is None or not hasattr(request, 'environ'):
            request = getRequest()
        if request is None:
            raise SessionDataManagerErr(
                'Sessions need a request; none is being published.')
        return outermost_request(request)

    def _browser_session(self, create=0, id_only=False):
        """This request's session, even one that is only a browser id."""
        request = self._request()
        sessions = self._request_sessions(request)
        if not sessions.looked_up:
            sessions.current = self._load_current(request)
            sessions.looked_up = True
        session = sessions.current
        if session is not None and session._invalid:
            # Invalidated in this request: the next session gets a new id.
            session = sessions.current = None
        if session is None and create:
            session = sessions.current = self._create(request)
            session._id_only = id_only
        return session

    def _existing_session(self):
        """This request's session if the browser has one, not just an id
        (nor making one of it, as getSessionData does)."""
        session = self._browser_session(create=0)
        return None if session is None or session._id_only else session

    def _request_sessions(self, request):
        per_manager = request.__dict__.setdefault(REQUEST_STATE_KEY, {})
        sessions = per_manager.get(self.id)
        if sessions is None:
            sessions = per_manager[self.id] = RequestSessions()
        return sessions

    def _middleware_session(self, request):
        """The session of Beaker's middleware in the pipeline, or None."""
        environ = getattr(request, 'environ', None) or {}
        return environ.get(MIDDLEWARE_ENVIRON_KEY)

    def _middleware_store(self, request):
        beaker_session = self._middleware_session(request)
        if beaker_session is None:
            return None
        config.check_middleware_secret(beaker_session)
        return MiddlewareStore(beaker_session)

    def _load_current(self, request):
        middleware = self._middleware_store(request)
        if middleware is not None:
            record = middleware.load(None) if not middleware.is_new else None
            return self._session(middleware.session_id, record, middleware)
        configuration = self._configuration()
        session_id = configuration.cookie.read(request)
        if session_id is None:
            return None
        return self._load_from(
            configuration.store_for(request), session_id, configuration)

    def _load(self, request, session_id):
        middleware = self._middleware_store(request)
        if middleware is not None:
            found = middleware.beaker_session.get_by_id(session_id)
            if found is None:
                return None
            return self._session(session_id, dict(found),
                                 MiddlewareStore(found))
        configuration = self._configuration()
        return self._load_from(
            configuration.store_for(request), session_id, configuration)

    def _load_from(self, store, session_id, configuration):
        try:
            with zodb_connection(self._p_jar):
                record = store.load(session_id)
        except ConflictError:
            raise  # Of the ZODB, resolving a reference: Zope retries.
        except Exception as exc:
            outage_log.failed(store.name, 'read from', exc)
            raise SessionStoreError(
                'The session store (%s) cannot be read: %s'
                % (store.name, describe(exc))) from exc
        outage_log.succeeded(store.name)
        if record is None:
            return None
        return self._session(session_id, record, store, configuration)

    def _session(self, session_id, record, store, configuration=None):
        if configuration is None and config.is_configured():
            configuration = self._configuration()
        if configuration is None:  # Beaker's middleware alone
            granularity, timeout = WRITE_GRANULARITY, None
        else:
            granularity = configuration.write_granularity
            timeout = configuration.timeout
        now = time.time()
        session = BeakerSessionData(session_id, record, granularity, now,
                                    store, timeout)
        session._zodb_connection = self._p_jar
        session._access(now)
        return session

    def _create(self, request):
        middleware = self._middleware_store(request)
        if middleware is not None:
            # The middleware made an id and sends its cookie itself.
            return self._session(middleware.session_id, None, middleware)
        configuration = self._configuration()
        session_id = configuration.cookie.new_id()
        configuration.cookie.send(request.response, session_id)
        return self._session(
            session_id, None, configuration.store_for(request),
            configuration)


InitializeClass(BeakerSessionDataManager)


def outermost_request(request):
    """The request that ``request`` is a subrequest of, if any.

    A subrequest (plone.subrequest: Diazo includes, tiles) has the
    session of the request it is made in: with stock sessions both find
    the same object in their shared ZODB connection.  So it uses that
    request's sessions and response (the cookie of a new session).
    """
    while True:
        other = getattr(request, 'other', None)
        parent = other.get('PARENT_REQUEST') if isinstance(
            other, dict) else None
        if parent is None or parent is request:
            return request
        request = parent


def remove_stale_hooks(container):
    """Unregister the session traversal hooks of managers that are gone.

    A hook outlives its manager when the manager went without its
    ``manage_beforeDelete``, as when its product was uninstalled: the hook
    is then a broken object that fails on every request.
    """
    for name in HOOK_NAMES:
        for _, hook in queryBeforeTraverse(container, name):
            manager_id = getattr(hook, '_sessionDataManager', None)
            if not callable(hook) or not isinstance(manager_id, str) \
                    or manager_id not in container.objectIds():
                unregisterBeforeTraverse(container, name)
                logger.info('Removed the stale %s traversal hook of %r '
                            'from %s', name, manager_id,
                            '/'.join(container.getPhysicalPath()) or '/')


@requestmethod('POST')
def addBeakerSessionDataManager(dispatcher, id, title='', replace=False,
                                REQUEST=None):
    """Add a Beaker session data manager to the dispatcher's container.

    With ``replace``, the object that has ``id`` (the stock session data
    manager, say) is deleted first.  Hooks left by managers that are gone
    are removed either way.
    """
    container = dispatcher.Destination()
    id = (id or '').strip()
    try:
        checkValidId(container, id, allow_dup=True)
        # Subobjects only: hasObject() is true for methods too.
        existing = id in container.objectIds()
        if not existing:
            checkValidId(container, id)  # As _setObject will.
        elif not replace:
            raise BadRequest(
                'The id "%s" is already in use. Tick "Replace the existing '
                'session_data_manager" to replace that object, or choose '
                'another id.' % id)
        elif REQUEST is not None and not getSecurityManager(
                ).checkPermission(delete_objects, container):
            # Through the web; Python code may delete it anyway.
            raise BadRequest('Replacing "%s" needs the permission "%s" here.'
                             % (id, delete_objects))
    except BadRequest as exc:
        if REQUEST is None:
            raise
        REQUEST.RESPONSE.setStatus(400)
        # Zope's messages are HTML-escaped; the form escapes them itself.
        message = html.unescape(exc.args[0] if exc.args else str(exc))
        return addBeakerSessionDataManagerForm.__of__(dispatcher)(
            error=message, id=id, title=title, replace=replace)
    if existing:
        container.manage_delObjects([id])
    remove_stale_hooks(container)
    container._setObject(id, BeakerSessionDataManager(id, title=title))
    if REQUEST is not None:
        REQUEST.RESPONSE.redirect(
            '%s/manage_workspace' % dispatcher.DestinationURL())


addBeakerSessionDataManagerForm = PageTemplateFile(
    'www/addBeakerSessionDataManager.pt', globals(),
    __name__='addBeakerSessionDataManagerForm')
