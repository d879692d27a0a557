"""Test layers and a WSGI test client for Products.BeakerSessionDataManager."""

import io
import logging
import os
import secrets
import shutil
import sys
import tempfile

import webtest

from AccessControl.SecurityManagement import getSecurityManager
from AccessControl.SecurityManagement import setSecurityManager
from plone.testing import Layer
from plone.testing import zca
from plone.testing import zodb
from plone.testing import zope
from zope.configuration import xmlconfig
from ZPublisher.httpexceptions import HTTPExceptionHandler
from ZPublisher.WSGIPublisher import publish_module


MANAGER_NAME = 'manager'
MANAGER_PASSWORD = 'secret'

PRODUCTS = (
    'Products.PythonScripts',
    'Products.Sessions',
    'Products.Transience',
    'Products.TemporaryFolder',
    'Products.BeakerSessionDataManager',
)

logger = logging.getLogger('Products.BeakerSessionDataManager')


def configure_file_sessions(prefix):
    """Configure the file store in a new temporary directory; return it."""
    from Products.BeakerSessionDataManager import config

    directory = tempfile.mkdtemp(prefix=prefix)
    config.configure({
        'session.type': 'file',
        'session.data_dir': os.path.join(directory, 'data'),
        'session.lock_dir': os.path.join(directory, 'lock'),
        'session.secret': secrets.token_hex(20),
    })
    return directory


class BeakerSessionDataManagerFixture(Layer):
    """Zope with the session machinery installed and Beaker configured.

    Installs Products.PythonScripts, the stock session products and this
    product, adds a ``temp_folder`` (the container stock sessions expect
    at ``/temp_folder/session_data``) and a user ``MANAGER_NAME`` with the
    Manager role in the root user folder.  Beaker stores its files in a
    temporary directory that is removed on tear-down.

    ``/session_data_manager`` is the stock one that Products.Sessions adds;
    ``STOCK_SESSIONS_FIXTURE`` and ``BEAKER_SESSIONS_FIXTURE``, built on
    this layer, say which one the tests get.
    """

    defaultBases = (zope.STARTUP,)

    def setUp(self):
        self['zodbDB'] = zodb.stackDemoStorage(
            self.get('zodbDB'), name='BeakerSessionDataManagerFixture')
        self.tmpdir = self['beaker_dir'] = configure_file_sessions(
            'beakersessions-')
        self.setUpZCML()
        with zope.zopeApp() as app:
            for name in PRODUCTS:
                zope.installProduct(app, name)
            if 'temp_folder' not in app.objectIds():
                # Zope mounts this from a temporary storage; a container
                # of the same class in the test database will do.
                from Products.TemporaryFolder import TemporaryContainer
                app._setObject(
                    'temp_folder', TemporaryContainer('temp_folder'))
            app.acl_users.userFolderAddUser(
                MANAGER_NAME, MANAGER_PASSWORD, ['Manager'], [])

    def tearDown(self):
        from Products.BeakerSessionDataManager import config

        with zope.zopeApp() as app:
            for name in reversed(PRODUCTS):
                zope.uninstallProduct(app, name)
        zca.popGlobalRegistry()
        del self['configurationContext']
        config.reset()
        del self['beaker_dir']
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self['zodbDB'].close()
        del self['zodbDB']

    def setUpZCML(self):
        # As Zope does at start-up: load the products' configure.zcml
        # (Products.Sessions' makes manage_afterAdd hooks official).
        zca.pushGlobalRegistry()
        self['configurationContext'] = context = zca.stackConfigurationContext(
            self.get('configurationContext'))
        load_zcml(context)


def load_zcml(context):
    """Load Products.Sessions' configure.zcml (its manage_afterAdd hooks)
    and this product's (the login subscriber, where Products.
    PluggableAuthService is installed), each with its package, as Zope
    does at start-up."""
    import Products.Sessions

    import Products.BeakerSessionDataManager
    xmlconfig.file('configure.zcml', Products.Sessions, context=context)
    xmlconfig.file('configure.zcml', Products.BeakerSessionDataManager,
                   context=context)


FIXTURE = BeakerSessionDataManagerFixture()
FUNCTIONAL_TESTING = zope.FunctionalTesting(
    bases=(FIXTURE,), name='BeakerSessionDataManager:Functional')
INTEGRATION_TESTING = zope.IntegrationTesting(
    bases=(FIXTURE,), name='BeakerSessionDataManager:Integration')


def replaceSessionDataManager(app, factory):
    """Replace ``/session_data_manager`` by what ``factory(app)`` adds."""
    if 'session_data_manager' in app.objectIds():
        app._delObject('session_data_manager')
    factory(app)


def addStockSessionDataManager(app):
    """Add the stock manager, as Products.Sessions does in a new Zope."""
    from Products.Sessions import install_session_data_manager
    install_session_data_manager(app)


def addBeakerSessionDataManager(app):
    """Add this product's manager, as a site manager would in the ZMI."""
    factory = app.manage_addProduct['BeakerSessionDataManager']
    factory.addBeakerSessionDataManager('session_data_manager')


class SessionDataManagerFixture(Layer):
    """Put the session data manager made by ``factory`` at the root."""

    defaultBases = (FIXTURE,)

    def __init__(self, factory, **kw):
        super().__init__(**kw)
        self.factory = factory

    def setUp(self):
        self['zodbDB'] = zodb.stackDemoStorage(
            self.get('zodbDB'), name=self.__name__)
        with zope.zopeApp() as app:
            replaceSessionDataManager(app, self.factory)

    def tearDown(self):
        self['zodbDB'].close()
        del self['zodbDB']


STOCK_SESSIONS_FIXTURE = SessionDataManagerFixture(
    addStockSessionDataManager, name='StockSessionsFixture')
BEAKER_SESSIONS_FIXTURE = SessionDataManagerFixture(
    addBeakerSessionDataManager, name='BeakerSessionsFixture')


class StoreFixture(Layer):
    """``BEAKER_SESSIONS_FIXTURE`` with its sessions in another store.

    ``make_settings()`` returns the ``<product-config beaker>`` settings of
    the store and a function removing what it made.  It runs at set-up,
    so that a store whose server is missing skips only its own tests.
    The configuration in force before is restored on tear-down.
    """

    defaultBases = (BEAKER_SESSIONS_FIXTURE,)

    def __init__(self, make_settings, **kw):
        super().__init__(**kw)
        self.make_settings = make_settings

    def setUp(self):
        from Products.BeakerSessionDataManager import config

        settings, self.cleanup = self.make_settings()
        self.previous = config._current
        try:
            self['beaker_configuration'] = config.configure(settings)
        except Exception:
            self.cleanup()
            raise

    def tearDown(self):
        from Products.BeakerSessionDataManager import config

        config._current = self.previous
        del self['beaker_configuration']
        self.cleanup()


def store_functional_testing(name, make_settings):
    """A functional testing layer with our manager on store ``name``."""
    return zope.FunctionalTesting(
        bases=(StoreFixture(make_settings, name='%sStoreFixture' % name),),
        name='BeakerSessions:%s:Functional' % name)


STOCK_SESSIONS_FUNCTIONAL_TESTING = zope.FunctionalTesting(
    bases=(STOCK_SESSIONS_FIXTURE,), name='StockSessions:Functional')
BEAKER_SESSIONS_FUNCTIONAL_TESTING = zope.FunctionalTesting(
    bases=(BEAKER_SESSIONS_FIXTURE,), name='BeakerSessions:Functional')
BEAKER_SESSIONS_INTEGRATION_TESTING = zope.IntegrationTesting(
    bases=(BEAKER_SESSIONS_FIXTURE,), name='BeakerSessions:Integration')


class ZopeWSGIApp:
    """Zope's WSGI publisher as a WSGI server runs it.

    Publishes against the database of the current (functional) layer, since
    Zope's application opens its connections from the layer's ``zodbDB``.
    Like a WSGI server, turns an exception that escapes the publisher into
    ``500 Internal Server Error`` and logs it (set ``handle_errors = False``
    to have it raised instead).  Keeps the caller's security manager.
    """

    handle_errors = True

    def __init__(self):
        self.publish = HTTPExceptionHandler(publish_module)

    def __call__(self, environ, start_response):
        security_manager = getSecurityManager()
        try:
            return self.publish(environ, start_response)
        except Exception:
            if not self.handle_errors:
                raise
            logger.exception('Error publishing %s', environ['PATH_INFO'])
            start_response('500 Internal Server Error',
                           [('Content-Type', 'text/plain')],
                           sys.exc_info())
            return [b'Internal Server Error']
        finally:
            setSecurityManager(security_manager)


def browser(**kw):
    """A `webtest.TestApp` publishing through Zope; one cookie jar each.

    The test must ``transaction.commit()`` what it set up before the first
    request: the publisher begins a new transaction, discarding uncommitted
    changes.  ``browser().authorization = ('Basic', (name, password))``
    authenticates, e.g. as ``MANAGER_NAME``/``MANAGER_PASSWORD``.
    """
    kw.setdefault('extra_environ', {'HTTP_HOST': 'nohost'})
    return webtest.TestApp(ZopeWSGIApp(), **kw)


def publish_raw_cookie(app, path, header):
    """GET ``path`` through ``app`` (a `ZopeWSGIApp`) with the raw
    ``Cookie`` header ``header`` (bytes), as a WSGI server hands it over.

    WebTest's cookie jar re-encodes or refuses what a hostile client may
    send; this does not.  Returns the status line, the response headers and
    the body as text.
    """
    environ = {
        'REQUEST_METHOD': 'GET', 'PATH_INFO': path,
        'QUERY_STRING': '', 'SERVER_NAME': 'nohost', 'SERVER_PORT': '80',
        'SERVER_PROTOCOL': 'HTTP/1.1', 'HTTP_HOST': 'nohost',
        'wsgi.url_scheme': 'http', 'wsgi.input': io.BytesIO(),
        'wsgi.errors': io.StringIO(),
        'HTTP_COOKIE': header.decode('latin-1'),
    }
    started = []
    body = b''.join(app(
        environ, lambda status, headers, exc_info=None: started.append(
            (status, headers))))
    [(status, headers)] = started
    return status, headers, body.decode('utf-8', 'replace')
