"""The ZMI tabs of the Beaker session data manager: Settings, Status, Test.

A mixin of ``BeakerSessionDataManager``: what an administrator sees and
does through the web, kept apart from the session machinery.
"""
import inspect
import secrets
import time

from beaker.session import Session

import transaction
from AccessControl.class_init import InitializeClass
from AccessControl.Permissions import view_management_screens
from AccessControl.requestmethod import requestmethod
from AccessControl.SecurityInfo import ClassSecurityInfo
from Products.PageTemplates.PageTemplateFile import PageTemplateFile
from ZODB.POSException import ConflictError

from . import config
from . import status
from .cleanup import layout_for
from .interfaces import ConfigurationError
from .interfaces import SessionDataManagerErr
from .outages import describe
from .outages import warning_log
from .permissions import change_session_data_managers
from .store import MiddlewareStore


MIDDLEWARE = "Beaker's SessionMiddleware (zope.ini)"
# The options an administrator looks for first, in this order; the others
# follow alphabetically.
LABELS = (
    ('type', 'Store type'),
    ('url', 'Store URL'),
    ('data_dir', 'Data directory'),
    ('lock_dir', 'Lock directory'),
    ('key', 'Cookie name'),
    ('httponly', 'Cookie HttpOnly'),
    ('samesite', 'Cookie SameSite'),
    ('secure', 'Cookie Secure'),
    ('cookie_path', 'Cookie path'),
    ('cookie_domain', 'Cookie domain'),
    ('cookie_expires', 'Cookie expires'),
    ('timeout', 'Timeout (seconds)'),
    ('data_serializer', 'Serializer'),
    ('secret', 'Secret'),
    ('encrypt_key', 'Encryption key'),
    ('validate_key', 'Validation key'),
    ('write_granularity', 'Write granularity (seconds)'),
)
# What a Beaker session uses for an option its middleware was not given.
BEAKER_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(
        Session.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty}
PROBE_KEY = '_beaker_zmi_test'


def display(value):
    """An option value as the Settings tab shows it."""
    if value is None or value == '':
        return '(not set)'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return str(value)


def settings_rows(options, source_of):
    """Rows (label, option, value, source) for ``options``, masked."""
    labels = dict(LABELS)
    order = [name for name, _ in LABELS if name in options]
    order += sorted(name for name in options if name not in labels)
    return [{'label': labels.get(name, ''),
             'option': 'session.' + name,
             'value': display(config.mask_option(name, options[name])),
             'source': source_of(name)} for name in order]


def middleware_rows(beaker_session):
    """Settings rows for the session Beaker's SessionMiddleware made."""
    # The middleware's options, read without loading the session.
    params = vars(beaker_session).get('_params') or {}
    options = {name: BEAKER_DEFAULTS.get(name) for name, _ in LABELS
               if name in BEAKER_DEFAULTS}
    options.update((name, value) for name, value in params.items()
                   if not name.startswith('_'))

    def source_of(name):
        given = name in params and params[name] != BEAKER_DEFAULTS.get(name)
        return MIDDLEWARE if given else 'default'
    return settings_rows(options, source_of)


def format_time(timestamp):
    """A Unix time as local date and time with the time zone."""
    return time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(timestamp))


class SessionDataManagerZMI:
    """The ZMI tabs; the manager class mixes them in."""

    manage_options = (
        {'label': 'Settings', 'action': 'manage_main'},
        {'label': 'Status', 'action': 'manage_status'},
        {'label': 'Test', 'action': 'manage_test'},
    )

    security = ClassSecurityInfo()

    #
    #   Settings
    #

    manage_main = PageTemplateFile(
        'www/manageBeakerSessionDataManager.pt', globals(),
        __name__='manage_main')
    security.declareProtected(view_management_screens,  # NOQA: D001
                              'manage_main')

    # Stock's management API, for scripts that set up sites.

    @security.protected(change_session_data_managers)
    def setTitle(self, title):
        self.title = str(title) if title else ''

    @security.protected(view_management_screens)
    def getContainerPath(self):
        """No session data container: stock's answer for none."""
        return ''

    @security.protected(view_management_screens)
    def hasSessionDataContainer(self):
        """Whether sessions have a store (stock: True, or None)."""
        if self.getSessionOrigin() is not None:
            return True

    @security.protected(change_session_data_managers)
    def setContainerPath(self, path=None):
        """Refused: the store is chosen in zope.conf."""
        raise SessionDataManagerErr(
            'Beaker sessions have no session data container: the store is '
            'set by the session.* options of <product-config beaker> in '
            'zope.conf.')

    @security.protected(view_management_screens)
    def getRequestName(self):
        """The request key under which the session is published."""
        return self._requestSessionName or ''

    @security.protected(view_management_screens)
    def getSessionOrigin(self):
        """Where this request's session comes from: 'middleware',
        'zope.conf' or None (not configured)."""
        if self._middleware_session(self.REQUEST) is not None:
            return 'middleware'
        return 'zope.conf' if config.is_configured() else None

    @security.protected(view_management_screens)
    def getSettings(self):
        """The effective Beaker options with their sources, secrets masked.

        Under the middleware: the middleware's options, since the product
        then uses neither its store nor its cookie.
        """
        beaker_session = self._middleware_session(self.REQUEST)
        if beaker_session is not None:
            return middleware_rows(beaker_session)
        if not config.is_configured():
            return []
        configuration = config.get_configuration()
        return settings_rows(configuration.options, configuration.source_of)

    @security.protected(view_management_screens)
    def getConfigurationError(self):
        """Why sessions are not configured, or the middleware's session is
        refused, as the error says it."""
        beaker_session = self._middleware_session(self.REQUEST)
        try:
            if beaker_session is not None:
                config.check_middleware_secret(beaker_session)
            else:
                config.get_configuration()
        except ConfigurationError as exc:
            return str(exc)
        return None

    @security.protected(change_session_data_managers)
    @requestmethod('POST')
    def manage_changeBeakerSDM(self, title='', requestName='', REQUEST=None):
        """Change the title and the request name."""
        self.title = str(title or '')
        requestName = (requestName or '').strip()
        if requestName != self._requestSessionName:
            self.updateTraversalData(requestName or None)
        if REQUEST is not None:
            return self.manage_main(
                self, REQUEST, manage_tabs_message='Changes saved.')

    #
    #   Status
    #

    manage_status = PageTemplateFile(
        'www/manageBeakerSessionStatus.pt', globals(),
        __name__='manage_status')
    security.declareProtected(view_management_screens,  # NOQA: D001
                              'manage_status')

    @security.protected(view_management_screens)
    def getStoreStatus(self):
        """The store's health, or None when there is no store on the
        server to check: the middleware's, the cookie, or none
        configured.  Read only: the tab is shown by a GET."""
        configuration = self._checked_configuration()
        if configuration is None:
            return None
        result = status.check_store(configuration, write=False)
        try:
            cleaned = status.last_cleanup(configuration)
            needs_cleanup = layout_for(configuration) is not None
        except Exception as exc:
            status.log_unexpected(configuration, exc)
            cleanup = 'unknown: %s' % describe(exc)
        else:
            if cleaned:
                cleanup = format_time(cleaned)
            elif needs_cleanup:
                cleanup = ('never recorded: run "beaker-sessions cleanup" '
                           'regularly (from cron)')
            else:
                cleanup = 'not needed for this store'
        return {
            'store_name': result.store_name,
            'ok': result.ok,
            'error': result.error,
            'round_trip_ms': result.round_trip_ms,
            'session_count': result.session_count,
            'count_error': result.count_error,
            'last_cleanup': cleanup,
            'shared_digest': configuration.shared_digest(),
            'shared_options': ', '.join(
                'session.' + name for name in config.SHARED_OPTIONS),
            'foreign_cookies': warning_log.totals.get('signature', 0),
            'undecodable_records': warning_log.totals.get('undecodable', 0),
            'records_ahead': warning_log.totals.get('clock', 0),
        }

    def _checked_configuration(self):
        """The configuration whose store the Status tab checks, or None."""
        if self.getSessionOrigin() != 'zope.conf':
            return None
        configuration = config.get_configuration()
        if configuration.type == 'cookie':
            return None
        return configuration

    @security.protected(change_session_data_managers)
    @requestmethod('POST')
    def manage_checkStoreWrite(self, REQUEST=None):
        """Write a probe record under a fresh session id, read it back and
        remove it; show the Status tab with the outcome."""
        configuration = self._checked_configuration()
        check = None
        if configuration is not None:
            # The page counts the sessions again: not counted here.
            result = status.probe(configuration, write=True)
            check = {'ok': result.ok, 'error': result.error,
                     'round_trip_ms': result.round_trip_ms}
        return self.manage_status(self, REQUEST, write_check=check)

    #
    #   Test
    #

    manage_test = PageTemplateFile(
        'www/manageBeakerSessionTest.pt', globals(),
        __name__='manage_test')
    security.declareProtected(view_management_screens,  # NOQA: D001
                              'manage_test')

    @security.protected(change_session_data_managers)
    @requestmethod('POST')
    def manage_testSession(self, REQUEST=None):
        """Write, read back and delete a probe value in the caller's own
        session, each step committed on its own; show each step."""
        return self.manage_test(self, REQUEST,
                                steps=self._probe_session(REQUEST))

    def _probe_session(self, request):
        token = secrets.token_hex(8)
        steps = []

        def step(name, action):
            started = time.perf_counter()
            try:
                detail = action()
            except ConflictError:
                raise
            except Exception as exc:
                transaction.abort()
                ok, detail = False, describe(exc)
            else:
                ok = True
            steps.append({
                'name': name, 'ok': ok, 'detail': detail,
                'ms': '%.1f' % ((time.perf_counter() - started) * 1000)})
            return ok

        def write():
            session = self.getSessionData()
            session[PROBE_KEY] = token
            self._commit_probe(request)
            return 'Stored %s = %r in session %s...' % (
                PROBE_KEY, token, session.getContainerKey()[:8])

        def read():
            stored = self._stored_session(request)
            value = stored.get(PROBE_KEY) if stored is not None else None
            if value != token:
                raise ValueError('the store returned %r instead of %r'
                                 % (value, token))
            return 'Read %s = %r back from the %s.' % (
                PROBE_KEY, value, self._store_name(request))

        def delete():
            del self.getSessionData()[PROBE_KEY]
            self._commit_probe(request)
            stored = self._stored_session(request)
            if stored is not None and PROBE_KEY in stored:
                raise ValueError('%s is still in the store' % PROBE_KEY)
            return 'Deleted %s; the store no longer has it.' % PROBE_KEY

        # Each step needs the one before it.
        for name, action in (('Write', write), ('Read', read),
                             ('Delete', delete)):
            if not step(name, action):
                break
        return steps

    def _commit_probe(self, request):
        """Commit the session change now, into the store."""
        transaction.commit()
        middleware = self._middleware_store(request)
        if middleware is not None:
            # The middleware would write only after the response.
            middleware.beaker_session.persist()

    def _stored_session(self, request):
        """The caller's session as the store has it, not as this request
        holds it."""
        return self._load(request, self.getSessionData().getContainerKey())

    def _store_name(self, request):
        if self._middleware_session(request) is not None:
            return MiddlewareStore.name
        return config.get_configuration().store.name


InitializeClass(SessionDataManagerZMI)
