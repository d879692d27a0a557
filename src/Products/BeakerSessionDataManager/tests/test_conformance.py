"""One scenario suite, run against stock Zope sessions and against ours.

Stock sessions (Products.Sessions + Products.Transience) are the oracle:
every scenario goes through Zope's WSGI publisher, with the code under test
in Python Scripts and Page Templates in the application root, as add-ons
use sessions.  Where this product differs on purpose, the difference is
documented and pinned in ``TestDeliberateDifferences``.
"""

import binascii
import os
import re
import unittest

import transaction
from AccessControl.SecurityManagement import getSecurityManager
from AccessControl.SecurityManagement import setSecurityManager
from Acquisition import aq_base
from OFS.Folder import manage_addFolder
from Products.Five import BrowserView
from Products.PageTemplates.ZopePageTemplate import manage_addPageTemplate
from Products.PythonScripts.PythonScript import manage_addPythonScript
from zope.component import getGlobalSiteManager
from zope.globalrequest import getRequest
from zope.globalrequest import setRequest
from zope.interface import Interface
from zope.publisher.interfaces.browser import IDefaultBrowserLayer
from ZPublisher.BaseRequest import RequestContainer

from Products.BeakerSessionDataManager import testing
from Products.BeakerSessionDataManager.tests import stores


class AppendToSessionList(BrowserView):
    """Unrestricted code (a view, an External Method) mutating a value.

    Appends to the list stored as ``items``.  With ``notify=1`` it then sets
    ``SESSION._p_changed``, which restricted code may not do.
    """

    def __call__(self, notify=False):
        session = self.request.SESSION
        items = session['items']
        items.append(len(items) + 1)
        if notify:
            session._p_changed = 1
        return repr(items)


class CSRFToken(BrowserView):
    """Products.PluggableAuthService's CSRF token (utils.getCSRFToken and
    checkCSRFToken, PAS 4.2), which every csrf_only ZMI form of PAS (users,
    roles, groups) renders and checks: kept in the session as bytes.

    Without ``csrf_token`` answers the token, as a form renders it; with
    it, what the check says, and the type the session gave back.
    """

    def __call__(self, csrf_token=None):
        session = getattr(self.request, 'SESSION', None)
        token = session.get('_csrft_', None)
        if token is None:
            token = session['_csrft_'] = binascii.hexlify(os.urandom(20))
        kept = type(token).__name__
        if isinstance(token, bytes):
            token = token.decode('utf8')
        if csrf_token is None:
            return token
        if csrf_token != token:
            return 'incorrect CSRF token'
        return 'ok, kept as %s' % kept


# What plone.subrequest (2.x) leaves out when it copies a request's
# ``other`` into a subrequest.
SUBREQUEST_IGNORE = {
    'ACTUAL_URL', 'LANGUAGE_TOOL', 'PARENTS', 'PARENT_REQUEST', 'PUBLISHED',
    'RESPONSE', 'SERVER_URL', 'TraversalRequestNameStack', 'URL',
    'VIRTUAL_URL', 'VIRTUAL_URL_PARTS', 'VirtualRootPhysicalPath'}


def subrequest(path):
    """Publish ``path`` as plone.subrequest's ``subrequest()`` does (Plone
    6: Diazo includes, plone.app.blocks tiles), as far as sessions see it:
    a clone of the request with its ``other``, its response's cookies and
    ``PARENT_REQUEST``, traversed from the root in the same transaction.
    Returns what the published object returned."""
    parent = getRequest()
    security_manager = getSecurityManager()
    request = parent.clone()
    for name, value in parent.other.items():
        if name not in SUBREQUEST_IGNORE and not name.startswith('_') \
                and not re.match(r'^(?:BASE|URL)\d+$', name):
            request.other[name] = value
    for name, cookie in parent.response.cookies.items():
        request.cookies[name] = cookie['value']
    request['PARENT_REQUEST'] = parent
    try:
        setRequest(request)
        app = aq_base(parent['PARENTS'][-1]).__of__(
            RequestContainer(REQUEST=request))
        request['PARENTS'] = [app]
        request.environ['PATH_INFO'] = path
        request.processInputs()
        result = request.traverse(path)()
        for name, cookie in request.response.cookies.items():
            parent.response.cookies[name] = cookie
        return result
    finally:
        request.clear()
        setRequest(parent)
        setSecurityManager(security_manager)


class WithSubrequest(BrowserView):
    """A page that uses the session, then renders a part of itself in a
    subrequest (``/@@session-part``), then uses the session again."""

    def __call__(self, first=True):
        if first:
            self.request.SESSION['page'] = 'before'
        part = subrequest('/@@session-part')
        self.request.SESSION['after'] = 'page'
        return '%s; page: %s' % (part, sorted(self.request.SESSION.keys()))


class SessionPart(BrowserView):
    """A part (a tile, a Diazo include) reaching the session through the
    manager, as pas.plugins.oidc and Products.PlonePAS do."""

    def __call__(self):
        session = self.context.session_data_manager.getSessionData()
        session['part'] = 'tile'
        return 'part: %s' % sorted(session.keys())


def register_views(test, **views):
    """Register ``views`` (name: class) for the test's duration."""
    gsm = getGlobalSiteManager()
    required = (Interface, IDefaultBrowserLayer)
    for name, factory in views.items():
        gsm.registerAdapter(factory, required, Interface, name)
        test.addCleanup(
            gsm.unregisterAdapter, factory, required, Interface, name)


class PublishingTestCase(unittest.TestCase):
    """Scripts and templates in the root, published with cookie jars."""

    def setUp(self):
        self.app = self.layer['app']

    # Helpers

    def addScript(self, id, body, params=''):
        manage_addPythonScript(self.app, id)
        self.app[id].ZPythonScript_edit(params, body)
        transaction.commit()

    def addTemplate(self, id, text):
        manage_addPageTemplate(self.app, id, text=text)
        transaction.commit()

    def browser(self, manager=False):
        browser = testing.browser()
        if manager:
            browser.authorization = (
                'Basic', (testing.MANAGER_NAME, testing.MANAGER_PASSWORD))
        return browser

    def get(self, browser, path, status=200, **params):
        return browser.get(path, params=params, status=status).text

    def addCounter(self):
        self.addScript('count', '''\
session = container.REQUEST.SESSION
session['count'] = session.get('count', 0) + 1
return session['count']
''')

    def addSetter(self):
        self.addScript('set_value', '''\
container.REQUEST.SESSION[key] = value
return 'ok'
''', params='key, value')

    def addReader(self):
        self.addScript('show_keys', '''\
items = list(container.REQUEST.SESSION.items())
items.sort()
return repr(items)
''')

    def browserId(self, browser):
        """Return the browser id, making one as ``getBrowserId()`` does."""
        if 'browser_id' not in self.app.objectIds():
            self.addScript('browser_id', '''\
return context.session_data_manager.getBrowserIdManager().getBrowserId()
''')
        return self.get(browser, '/browser_id')

    def forgetCachedObjects(self):
        # ZODB connections keep objects in memory between requests; drop
        # them so that only what was stored is seen (stock sessions live
        # in the ZODB).
        self.layer['zodbDB'].cacheMinimize()


class SessionScenarios:
    """Scenarios that must give the same result with both managers."""

    # A session across requests

    def test_counter_across_requests(self):
        self.addCounter()
        browser = self.browser()
        self.assertEqual(
            [self.get(browser, '/count') for i in range(3)], ['1', '2', '3'])

    def test_second_browser_has_its_own_session(self):
        self.addCounter()
        first, second = self.browser(), self.browser()
        self.get(first, '/count')
        self.get(first, '/count')
        self.assertEqual(self.get(second, '/count'), '1')
        self.assertEqual(self.get(first, '/count'), '3')

    # The mapping API

    def test_missing_key_raises_KeyError(self):
        self.addScript('read_missing', '''\
try:
    container.REQUEST.SESSION['missing']
except KeyError:
    return 'KeyError'
return 'no error'
''')
        self.assertEqual(self.get(self.browser(), '/read_missing'), 'KeyError')

    def test_get_returns_None_or_the_default(self):
        self.addScript('get_missing', '''\
session = container.REQUEST.SESSION
return repr((session.get('k'), session.get('k', 'd')))
''')
        self.assertEqual(
            self.get(self.browser(), '/get_missing'), "(None, 'd')")

    def test_in_and_has_key(self):
        self.addScript('contains', '''\
session = container.REQUEST.SESSION
before = (bool('k' in session), bool(session.has_key('k')))
session['k'] = 0
after = (bool('k' in session), bool(session.has_key('k')))
return repr((before, after))
''')
        self.assertEqual(
            self.get(self.browser(), '/contains'),
            '((False, False), (True, True))')

    def test_keys_values_items_are_lists(self):
        self.addScript('listings', '''\
session = container.REQUEST.SESSION
session['a'] = 1
result = []
for value in (session.keys(), session.values(), session.items()):
    result.append(same_type(value, []) and 'list' or 'not a list')
    result.append(repr(value))
return ' '.join(result)
''')
        self.assertEqual(
            self.get(self.browser(), '/listings'),
            "list ['a'] list [1] list [('a', 1)]")

    def test_empty_session_is_true(self):
        # Add-ons test ``if session:`` after getSessionData(create=0).
        self.addScript('truth', '''\
return repr(bool(container.REQUEST.SESSION))
''')
        self.assertEqual(self.get(self.browser(), '/truth'), 'True')

    def test_setitem_and_delitem_from_restricted_code(self):
        self.addReader()
        self.addScript('set_and_del', '''\
session = container.REQUEST.SESSION
session['x'] = 1
session['y'] = 2
del session['x']
return repr(session.keys())
''')
        browser = self.browser()
        self.assertEqual(self.get(browser, '/set_and_del'), "['y']")
        self.assertEqual(self.get(browser, '/show_keys'), "[('y', 2)]")

    def test_set_and_delete_methods(self):
        self.addReader()
        self.addScript('set_and_delete', '''\
session = container.REQUEST.SESSION
session.set('x', 1)
session.set('y', 2)
session.delete('y')
return 'ok'
''')
        browser = self.browser()
        self.get(browser, '/set_and_delete')
        self.assertEqual(self.get(browser, '/show_keys'), "[('x', 1)]")

    def test_delete_in_a_later_request(self):
        self.addSetter()
        self.addReader()
        self.addScript('delete_x', '''\
del container.REQUEST.SESSION['x']
return 'ok'
''')
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='1')
        self.get(browser, '/set_value', key='y', value='2')
        self.get(browser, '/delete_x')
        self.assertEqual(self.get(browser, '/show_keys'), "[('y', '2')]")

    def test_update(self):
        self.addSetter()
        self.addReader()
        self.addScript('update', '''\
container.REQUEST.SESSION.update({'x': 'new', 'z': 3})
return 'ok'
''')
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='old')
        self.get(browser, '/set_value', key='y', value='kept')
        self.get(browser, '/update')
        self.assertEqual(
            self.get(browser, '/show_keys'),
            "[('x', 'new'), ('y', 'kept'), ('z', 3)]")

    def test_clear(self):
        self.addSetter()
        self.addReader()
        self.addScript('clear', '''\
container.REQUEST.SESSION.clear()
return 'ok'
''')
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='1')
        self.get(browser, '/clear')
        self.assertEqual(self.get(browser, '/show_keys'), '[]')

    def test_keys_keep_their_order(self):
        self.addSetter()
        self.addScript('set_keys', '''\
session = container.REQUEST.SESSION
for key in ['k5', 'k1', 'k7', 'k0', 'k3', 'k6', 'k2', 'k4']:
    session[key] = 1
return 'ok'
''')
        self.addScript('keys_in_order', '''\
return ' '.join(container.REQUEST.SESSION.keys())
''')
        self.addScript('move_k1', '''\
session = container.REQUEST.SESSION
del session['k1']
session['k1'] = 2
return 'ok'
''')
        browser = self.browser()
        self.get(browser, '/set_keys')
        self.forgetCachedObjects()
        self.assertEqual(self.get(browser, '/keys_in_order'),
                         'k5 k1 k7 k0 k3 k6 k2 k4')
        self.get(browser, '/move_k1')
        self.get(browser, '/set_value', key='k7', value='changed')
        self.get(browser, '/set_value', key='new', value='last')
        self.forgetCachedObjects()
        self.assertEqual(self.get(browser, '/keys_in_order'),
                         'k5 k7 k0 k3 k6 k2 k4 k1 new')

    def test_keys_named_like_the_stores_bookkeeping(self):
        # Beaker's record keeps its own keys beside the user's.
        keys = ['_creation_time', '_accessed_time', '_modified_time',
                '_browser_id_only', '_id', '_path', '_domain', '~_id',
                '~~_path', '~x', '~']
        self.addReader()
        self.addScript('set_keys', '''\
session = container.REQUEST.SESSION
for key in %r:
    session[key] = 'mine'
return 'ok'
''' % keys)
        self.addScript('metadata', '''\
session = container.REQUEST.SESSION
return ' '.join([same_type(session.getCreated(), 1.0) and 'float' or '?',
                 same_type(session.getLastAccessed(), 1.0) and 'float' or '?',
                 same_type(session.getId(), '') and 'str' or '?'])
''')
        browser = self.browser()
        self.get(browser, '/set_keys')
        self.forgetCachedObjects()
        self.assertEqual(self.get(browser, '/show_keys'),
                         repr(sorted((key, 'mine') for key in keys)))
        self.assertEqual(self.get(browser, '/metadata'), 'float float str')

    # Metadata

    def test_getCreated_is_a_float_and_stable(self):
        self.addSetter()
        self.addScript('created', '''\
created = container.REQUEST.SESSION.getCreated()
return same_type(created, 1.0) and repr(created) or 'not a float'
''')
        browser = self.browser()
        created = self.get(browser, '/created')
        self.assertNotEqual(created, 'not a float')
        self.get(browser, '/set_value', key='x', value='1')
        self.assertEqual(self.get(browser, '/created'), created)

    def test_getLastAccessed_is_a_float(self):
        self.addScript('accessed', '''\
accessed = container.REQUEST.SESSION.getLastAccessed()
return same_type(accessed, 1.0) and 'float' or repr(accessed)
''')
        browser = self.browser()
        self.assertEqual(self.get(browser, '/accessed'), 'float')
        self.assertEqual(self.get(browser, '/accessed'), 'float')

    def test_getLastModified_is_None_until_a_change(self):
        self.addSetter()
        self.addScript('modified', '''\
modified = container.REQUEST.SESSION.getLastModified()
if modified is None:
    return 'None'
return same_type(modified, 1.0) and 'float' or repr(modified)
''')
        self.addScript('set_and_show_modified', '''\
session = container.REQUEST.SESSION
session['x'] = 1
return same_type(session.getLastModified(), 1.0) and 'float' or 'other'
''')
        browser = self.browser()
        self.assertEqual(self.get(browser, '/modified'), 'None')
        self.assertEqual(self.get(browser, '/modified'), 'None')
        self.assertEqual(self.get(browser, '/set_and_show_modified'), 'float')
        self.assertEqual(self.get(browser, '/modified'), 'float')

    def test_getId_is_a_string(self):
        self.addScript('session_id', '''\
session_id = container.REQUEST.SESSION.getId()
return same_type(session_id, '') and 'str' or repr(session_id)
''')
        self.assertEqual(self.get(self.browser(), '/session_id'), 'str')

    def test_getContainerKey_is_the_browser_id(self):
        self.addScript('container_key', '''\
sdm = context.session_data_manager
key = container.REQUEST.SESSION.getContainerKey()
return repr(key == sdm.getBrowserIdManager().getBrowserId()) + ' ' + key
''')
        browser = self.browser()
        first = self.get(browser, '/container_key')
        self.assertTrue(first.startswith('True '), first)
        self.assertEqual(self.get(browser, '/container_key'), first)
        self.assertEqual(self.browserId(browser), first[len('True '):])

    def test_id_and_token_attributes(self):
        self.addSetter()
        self.addScript('attributes', '''\
session = container.REQUEST.SESSION
return repr([session.id == session.getId(),
             session.token == session.getContainerKey()])
''')
        self.addTemplate('template_id',
                         '<span tal:replace="request/SESSION/id"/> '
                         '<span tal:replace="request/SESSION/getId"/>')
        browser = self.browser()
        self.get(browser, '/set_value', key='token', value='a key')
        self.assertEqual(self.get(browser, '/attributes'), '[True, True]')
        first, second = self.get(browser, '/template_id').split()
        self.assertEqual(first, second)

    # Invalidation

    def test_invalidate(self):
        self.addScript('invalidate', '''\
session = container.REQUEST.SESSION
session['x'] = 1
valid_before = session.isValid()
session.invalidate()
return repr((bool(valid_before), bool(session.isValid())))
''')
        self.assertEqual(
            self.get(self.browser(), '/invalidate'), '(True, False)')

    def test_next_request_after_invalidate_has_an_empty_session(self):
        self.addCounter()
        self.addScript('invalidate', '''\
container.REQUEST.SESSION.invalidate()
return 'ok'
''')
        browser = self.browser()
        self.get(browser, '/count')
        self.get(browser, '/count')
        self.get(browser, '/invalidate')
        self.assertEqual(self.get(browser, '/count'), '1')
        self.assertEqual(self.get(browser, '/count'), '2')

    # The session data manager

    def test_getSessionData_without_create_and_no_session_is_None(self):
        self.addScript('get_no_create', '''\
return repr(context.session_data_manager.getSessionData(create=0))
''')
        browser = self.browser()
        response = browser.get('/get_no_create')
        self.assertEqual(response.text, 'None')
        self.assertNotIn('Set-Cookie', response.headers)

    def test_hasSessionData_is_false_and_creates_nothing(self):
        self.addScript('has_session', '''\
return repr(bool(context.session_data_manager.hasSessionData()))
''')
        browser = self.browser()
        response = browser.get('/has_session')
        self.assertEqual(response.text, 'False')
        self.assertNotIn('Set-Cookie', response.headers)
        self.assertEqual(self.get(browser, '/has_session'), 'False')

    def test_hasSessionData_after_a_session_was_started(self):
        self.addSetter()
        self.addScript('has_session', '''\
return repr(bool(context.session_data_manager.hasSessionData()))
''')
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='1')
        self.assertEqual(self.get(browser, '/has_session'), 'True')
        self.assertEqual(self.get(self.browser(), '/has_session'), 'False')

    def test_a_browser_id_alone_is_no_session(self):
        self.addScript('has_session', '''\
return repr(bool(context.session_data_manager.hasSessionData()))
''')
        browser = self.browser()
        self.browserId(browser)
        self.assertIn(self.cookie_name, browser.cookies)
        self.assertEqual(self.get(browser, '/has_session'), 'False')

    def test_answers_of_stock_types(self):
        # Compared with ==, these hold anyway; add-ons may print them.
        self.addScript('answers', '''\
sdm = context.session_data_manager
bim = sdm.getBrowserIdManager()
result = [sdm.hasSessionData()]
session = container.REQUEST.SESSION
result.append(session.isValid())
result += [bim.isBrowserIdNew(), bim.isBrowserIdFromCookie(),
           bim.isBrowserIdFromForm(), bim.isBrowserIdFromUrl()]
session.invalidate()
result.append(session.isValid())
return repr(result)
''')
        self.addScript('from_cookie', '''\
bim = context.session_data_manager.getBrowserIdManager()
bim.getBrowserId()
return repr([bim.isBrowserIdNew(), bim.isBrowserIdFromCookie()])
''')
        browser = self.browser()
        self.assertEqual(self.get(browser, '/answers'),
                         '[0, 1, True, None, None, None, None]')
        self.get(browser, '/from_cookie')
        self.assertEqual(self.get(browser, '/from_cookie'), '[False, 1]')

    def test_getSessionData_without_create_after_a_browser_id(self):
        # Stock hands out a session for any browser id.
        self.addScript('get_no_create', '''\
sdm = context.session_data_manager
return repr([sdm.hasSessionData(), sdm.getSessionData(create=0) is None,
             sdm.hasSessionData()])
''')
        browser = self.browser()
        self.browserId(browser)
        self.assertEqual(self.get(browser, '/get_no_create'),
                         '[False, False, True]')
        self.forgetCachedObjects()
        self.assertEqual(self.get(browser, '/get_no_create'),
                         '[True, False, True]')

    def test_SESSION_after_a_browser_id_alone_is_a_session(self):
        self.addScript('has_session', '''\
return repr(bool(context.session_data_manager.hasSessionData()))
''')
        self.addScript('read_session', '''\
return container.REQUEST.SESSION.getContainerKey()
''')
        browser = self.browser()
        browser_id = self.browserId(browser)
        self.assertEqual(self.get(browser, '/read_session'), browser_id)
        self.assertEqual(self.get(browser, '/has_session'), 'True')

    def test_reading_SESSION_starts_a_session_that_keeps_its_key(self):
        self.addScript('container_key', '''\
return container.REQUEST.SESSION.getContainerKey()
''')
        browser = self.browser()
        response = browser.get('/container_key')
        self.assertIn(self.cookie_name, browser.cookies)
        self.assertEqual(self.get(browser, '/container_key'), response.text)

    def test_no_cookie_when_SESSION_is_not_read(self):
        self.addScript('no_session', "return 'ok'")
        response = self.browser().get('/no_session')
        self.assertEqual(response.text, 'ok')
        self.assertNotIn('Set-Cookie', response.headers)

    # Mutable values

    def addMutableList(self):
        self.addScript('start_list', '''\
container.REQUEST.SESSION['items'] = [1]
return 'ok'
''')
        self.addScript('show_list', '''\
return repr(container.REQUEST.SESSION['items'])
''')

    def test_mutable_value_with_p_changed_from_unrestricted_code(self):
        gsm = getGlobalSiteManager()
        required = (Interface, IDefaultBrowserLayer)
        gsm.registerAdapter(
            AppendToSessionList, required, Interface, 'append-item')
        self.addCleanup(
            gsm.unregisterAdapter,
            AppendToSessionList, required, Interface, 'append-item')
        self.addMutableList()
        browser = self.browser()
        self.get(browser, '/start_list')
        self.forgetCachedObjects()
        self.assertEqual(
            self.get(browser, '/@@append-item', notify='1'), '[1, 2]')
        self.forgetCachedObjects()
        self.assertEqual(self.get(browser, '/show_list'), '[1, 2]')

    def test_mutable_value_set_again_after_a_change(self):
        self.addMutableList()
        self.addScript('append_and_set', '''\
session = container.REQUEST.SESSION
items = session['items']
items.append(len(items) + 1)
session.set('items', items)
return repr(items)
''')
        browser = self.browser()
        self.get(browser, '/start_list')
        self.forgetCachedObjects()
        self.assertEqual(self.get(browser, '/append_and_set'), '[1, 2]')
        self.forgetCachedObjects()
        self.assertEqual(self.get(browser, '/append_and_set'), '[1, 2, 3]')
        self.forgetCachedObjects()
        self.assertEqual(self.get(browser, '/show_list'), '[1, 2, 3]')

    # Real add-ons

    def test_csrf_token_of_PluggableAuthService(self):
        # A bytes value comes back as bytes; the form posts the token back.
        register_views(self, **{'csrf-token': CSRFToken})
        browser = self.browser()
        token = self.get(browser, '/@@csrf-token')
        self.assertEqual(self.get(browser, '/@@csrf-token', csrf_token=token),
                         'ok, kept as bytes')
        self.assertEqual(self.get(browser, '/@@csrf-token', csrf_token='x'),
                         'incorrect CSRF token')
        self.assertEqual(self.get(self.browser(), '/@@csrf-token',
                                  csrf_token=token), 'incorrect CSRF token')

    def test_subrequest_shares_the_session_of_its_page(self):
        # plone.subrequest: the part sees what the page set before it, and
        # the page what the part set, in the request and afterwards.
        register_views(self, **{'with-subrequest': WithSubrequest,
                                'session-part': SessionPart})
        self.addSetter()
        self.addReader()
        new = self.browser()
        self.assertEqual(
            self.get(new, '/@@with-subrequest'),
            "part: ['page', 'part']; page: ['after', 'page', 'part']")
        self.assertEqual(
            self.get(new, '/show_keys'),
            "[('after', 'page'), ('page', 'before'), ('part', 'tile')]")
        known = self.browser()
        self.get(known, '/set_value', key='earlier', value='1')
        self.forgetCachedObjects()
        self.assertEqual(
            self.get(known, '/@@with-subrequest'),
            "part: ['earlier', 'page', 'part']; "
            "page: ['after', 'earlier', 'page', 'part']")

    # Transactions

    def test_failed_request_does_not_keep_its_writes(self):
        self.addSetter()
        self.addReader()
        self.addScript('write_then_fail', '''\
container.REQUEST.SESSION['x'] = 'lost'
container.REQUEST.SESSION['y'] = 'lost'
raise ValueError('after the write')
''')
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='kept')
        self.get(browser, '/write_then_fail', status=500)
        self.assertEqual(self.get(browser, '/show_keys'), "[('x', 'kept')]")

    # Security

    def test_anonymous_may_use_its_own_session(self):
        self.addScript('own_session', '''\
sdm = context.session_data_manager
return repr((sdm.getSessionData() is not None, bool(sdm.hasSessionData())))
''')
        self.assertEqual(
            self.get(self.browser(), '/own_session'), '(True, True)')

    def test_anonymous_may_not_get_session_data_by_key(self):
        self.addScript('by_key', '''\
sdm = context.session_data_manager
return repr(sdm.getSessionDataByKey(key))
''', params='key')
        self.get(self.browser(), '/by_key', status=401, key='any')

    def test_anonymous_may_not_clear_session_data(self):
        self.addCounter()
        self.addScript('clear_data', '''\
context.session_data_manager.clearSessionData()
return 'cleared'
''')
        browser = self.browser()
        self.get(browser, '/count')
        self.get(browser, '/clear_data', status=401)
        self.assertEqual(self.get(browser, '/count'), '2')

    def test_manager_may_clear_session_data(self):
        self.addCounter()
        self.addScript('clear_data', '''\
context.session_data_manager.clearSessionData()
return 'cleared'
''')
        browser = self.browser()
        self.get(browser, '/count')
        self.get(browser, '/count')
        browser.authorization = (
            'Basic', (testing.MANAGER_NAME, testing.MANAGER_PASSWORD))
        self.assertEqual(self.get(browser, '/clear_data'), 'cleared')
        self.assertEqual(self.get(browser, '/count'), '1')

    def test_manager_gets_session_data_of_another_browser_by_key(self):
        self.addSetter()
        self.addScript('by_key', '''\
data = context.session_data_manager.getSessionDataByKey(key)
if data is None:
    return 'None'
return repr(data.get('x'))
''', params='key')
        visitor = self.browser()
        self.get(visitor, '/set_value', key='x', value='from visitor')
        key = self.browserId(visitor)
        manager = self.browser(manager=True)
        self.assertEqual(
            self.get(manager, '/by_key', key=key), "'from visitor'")

    def addByKey(self):
        self.addScript('by_key', '''\
return repr(context.session_data_manager.getSessionDataByKey(key))
''', params='key')

    def test_lookups_by_a_manager_with_a_browser_id_create_nothing(self):
        self.addScript('has_session', '''\
return repr(bool(context.session_data_manager.hasSessionData()))
''')
        self.addScript('look_up', '''\
sdm = context.session_data_manager
sdm.clearSessionData()
return repr(sdm.getSessionDataByKey('0' * 32))
''')
        manager = self.browser(manager=True)
        self.browserId(manager)
        self.assertEqual(self.get(manager, '/look_up'), 'None')
        self.assertEqual(self.get(manager, '/has_session'), 'False')

    def test_getSessionDataByKey_with_an_unknown_key_is_None(self):
        self.addByKey()
        manager = self.browser(manager=True)
        for key in ('unknown', '0' * 32, '12345678A1234567'):
            self.assertEqual(self.get(manager, '/by_key', key=key), 'None')

    def test_getSessionDataByKey_for_a_browser_without_session_is_None(self):
        self.addByKey()
        key = self.browserId(self.browser())
        manager = self.browser(manager=True)
        self.assertEqual(self.get(manager, '/by_key', key=key), 'None')

    # Page templates

    def test_page_template_path_expression(self):
        self.addSetter()
        self.addTemplate(
            'show_x', '<span tal:content="request/SESSION/x"></span>')
        browser = self.browser()
        self.get(browser, '/set_value', key='x', value='path')
        self.assertEqual(
            self.get(browser, '/show_x').strip(), '<span>path</span>')

    def test_page_template_python_expression(self):
        self.addSetter()
        self.addTemplate(
            'show_x',
            '<span tal:content="python:request.SESSION.get(\'x\')"></span>')
        browser = self.browser()
        self.assertEqual(self.get(browser, '/show_x').strip(), '<span></span>')
        self.get(browser, '/set_value', key='x', value='python')
        self.assertEqual(
            self.get(browser, '/show_x').strip(), '<span>python</span>')


class TestStockSessions(SessionScenarios, PublishingTestCase):
    """The scenarios against Products.Sessions and Products.Transience."""

    layer = testing.STOCK_SESSIONS_FUNCTIONAL_TESTING
    cookie_name = '_ZopeId'


class TestBeakerSessions(SessionScenarios, PublishingTestCase):
    """The scenarios against this product's session data manager (on the
    file store, the default)."""

    layer = testing.BEAKER_SESSIONS_FUNCTIONAL_TESTING
    cookie_name = 'beaker.session.id'


def on_store(name):
    """TestBeakerSessions with the sessions in store ``name``."""
    # Not a subclass of TestBeakerSessions: its layer's fixture would
    # come along (zope.pytestlayer marks the class).
    return type('TestBeakerSessionsOn_%s' % name,
                (SessionScenarios, PublishingTestCase), {
                    '__doc__': 'The scenarios against ours on the %s store.'
                               % name,
                    'layer': stores.LAYERS[name],
                    'cookie_name': TestBeakerSessions.cookie_name,
                })


for _name in stores.STORES:
    if _name != 'file':
        globals()['TestBeakerSessionsOn_%s' % _name] = on_store(_name)
del _name


class ZODBObjectScenarios:
    """An object of the ZODB kept in the session stays that object, as in
    stock sessions (which live in a ZODB): a later request finds it as the
    ZODB has it then, not a copy from when it was stored."""

    def setUp(self):
        super().setUp()
        manage_addFolder(self.app, 'shelf', title='before')
        transaction.commit()
        self.addScript('keep_shelf', '''\
session = container.REQUEST.SESSION
session['shelf'] = context.shelf
session['things'] = [context.shelf, 'and more']
return 'ok'
''')
        self.addScript('show_shelf', '''\
session = container.REQUEST.SESSION
shelf = session['shelf']
return '%s %s %s' % (shelf.title, session['things'][0].getId(),
                     shelf is session['things'][0])
''')

    def test_object_of_the_zodb(self):
        browser = self.browser()
        self.get(browser, '/keep_shelf')
        self.app.shelf.title = 'after'
        transaction.commit()
        self.forgetCachedObjects()
        self.assertEqual(self.get(browser, '/show_shelf'), 'after shelf True')


class TestStockZODBObjects(ZODBObjectScenarios, PublishingTestCase):

    layer = testing.STOCK_SESSIONS_FUNCTIONAL_TESTING


def zodb_objects_on(name):
    """ZODBObjectScenarios on store ``name``."""

    def test_kept_by_a_writer_without_the_zodb(self):
        # A merge where no ZODB is at hand (here: the test's) keeps the
        # reference as it was.
        browser = self.browser()
        self.get(browser, '/keep_shelf')
        store = self.layer['beaker_configuration'].store
        stores.age(store, self.browserId(browser), 5)
        self.assertEqual(self.get(browser, '/show_shelf'),
                         'before shelf True')

    return type('TestZODBObjectsOn_%s' % name,
                (ZODBObjectScenarios, PublishingTestCase), {
                    'layer': stores.LAYERS[name],
                    'test_kept_by_a_writer_without_the_zodb':
                        test_kept_by_a_writer_without_the_zodb,
                })


for _name in stores.STORES:
    globals()['TestZODBObjectsOn_%s' % _name] = zodb_objects_on(_name)
del _name


class TestDeliberateDifferences(PublishingTestCase):
    """Where this product differs from stock sessions on purpose.

    Each test runs its script with the stock manager, then with ours, and
    asserts both results, so that each difference is shown to be real.

    - ``len(SESSION)``: stock raises TypeError (a TransientObject has no
      length); ours counts the keys, like a dict.
    - ``for key in SESSION``: stock fails with KeyError(0) (Python falls
      back to ``__getitem__(0)``); ours iterates over the keys.
    - ``SESSION.setdefault()`` and ``SESSION.pop()``: stock has neither, so
      the name goes through acquisition (AttributeError when nothing of that
      name is found); ours behaves like a dict.
    - The browser cookie: stock's browser id manager sets ``_ZopeId``; ours
      sets ``beaker.session.id`` (``session.key``).
    - After ``invalidate()`` stock keeps the browser id and gives the next
      session a new ``getId()`` under the same ``getContainerKey()``; ours
      gives the browser a new id, so an old id cannot reach the new session.
    - The manager has no session data container: ``getContainerPath()``
      is '' and ``setContainerPath()`` is refused (the store is set in
      zope.conf).
    - The browser id manager's ``getCookieHTTPOnly()`` is true by default.
    - A subrequest (plone.subrequest) that starts the session of a new
      browser: stock makes a second session for the page and keeps that
      one; ours shares one.
    """

    layer = testing.FUNCTIONAL_TESTING

    def withEach(self, scenario):
        """Return ``{'stock': result, 'beaker': result}`` of ``scenario()``.

        The manager is swapped in the test's own storage, and each run
        starts with new browsers.
        """
        results = {}
        for kind, factory in (
                ('stock', testing.addStockSessionDataManager),
                ('beaker', testing.addBeakerSessionDataManager)):
            testing.replaceSessionDataManager(self.app, factory)
            transaction.commit()
            results[kind] = scenario()
        return results

    def runInSession(self, body):
        """Run script ``body`` in a session holding x='1' and y='2'.

        Returns, for each manager, what the script returned and the
        session's items as the next request sees them.
        """
        self.addSetter()
        self.addReader()
        self.addScript('difference', body)

        def scenario():
            browser = self.browser()
            self.get(browser, '/set_value', key='x', value='1')
            self.get(browser, '/set_value', key='y', value='2')
            return (self.get(browser, '/difference'),
                    self.get(browser, '/show_keys'))
        return self.withEach(scenario)

    def test_len(self):
        results = self.runInSession('''\
try:
    return repr(len(container.REQUEST.SESSION))
except TypeError as error:
    return 'TypeError: %s' % error
''')
        self.assertEqual(results['stock'][0], 'TypeError: object has no len()')
        self.assertEqual(results['beaker'][0], '2')

    def test_iteration(self):
        results = self.runInSession('''\
try:
    keys = [key for key in container.REQUEST.SESSION]
except KeyError as error:
    return 'KeyError: %s' % error
keys.sort()
return repr(keys)
''')
        self.assertEqual(results['stock'][0], 'KeyError: 0')
        self.assertEqual(results['beaker'][0], "['x', 'y']")

    def test_setdefault(self):
        results = self.runInSession('''\
session = container.REQUEST.SESSION
try:
    return repr([session.setdefault('x', 'd'), session.setdefault('z', 'd')])
except AttributeError as error:
    return 'AttributeError: %s' % error
''')
        self.assertEqual(results, {
            'stock': ('AttributeError: setdefault',
                      "[('x', '1'), ('y', '2')]"),
            'beaker': ("['1', 'd']",
                       "[('x', '1'), ('y', '2'), ('z', 'd')]"),
        })

    def test_pop(self):
        results = self.runInSession('''\
session = container.REQUEST.SESSION
try:
    return repr([session.pop('x'), session.pop('z', 'd')])
except AttributeError as error:
    return 'AttributeError: %s' % error
''')
        self.assertEqual(results, {
            'stock': ('AttributeError: pop', "[('x', '1'), ('y', '2')]"),
            'beaker': ("['1', 'd']", "[('y', '2')]"),
        })

    def test_cookie_name(self):
        self.addCounter()

        def scenario():
            browser = self.browser()
            self.get(browser, '/count')
            return sorted(browser.cookies)
        self.assertEqual(
            self.withEach(scenario),
            {'stock': ['_ZopeId'], 'beaker': ['beaker.session.id']})

    def test_invalidate_and_browser_id(self):
        self.addCounter()
        self.addScript('invalidate', '''\
container.REQUEST.SESSION.invalidate()
return 'ok'
''')
        self.addScript('ids', '''\
session = container.REQUEST.SESSION
return '%s %s' % (session.getContainerKey(), session.getId())
''')

        def scenario():
            browser = self.browser()
            self.get(browser, '/count')
            key_before, id_before = self.get(browser, '/ids').split()
            self.get(browser, '/invalidate')
            key_after, id_after = self.get(browser, '/ids').split()
            return (key_before == key_after, id_before == id_after)
        self.assertEqual(
            self.withEach(scenario),
            {'stock': (True, False), 'beaker': (False, False)})

    def test_subrequest_starting_the_session(self):
        # plone.subrequest, in a page that had not used the session of a
        # new browser: stock makes two sessions, the part's and the page's,
        # and keeps the page's; ours makes one for both.
        register_views(self, **{'with-subrequest': WithSubrequest,
                                'session-part': SessionPart})
        self.addReader()

        def scenario():
            browser = self.browser()
            return (self.get(browser, '/@@with-subrequest', first=''),
                    self.get(browser, '/show_keys'))
        self.assertEqual(self.withEach(scenario), {
            'stock': ("part: ['part']; page: ['after']",
                      "[('after', 'page')]"),
            'beaker': ("part: ['part']; page: ['after', 'part']",
                       "[('after', 'page'), ('part', 'tile')]")})

    def test_management_api_of_the_manager(self):
        # For scripts that set up sites; ours has no container to point at.
        self.addScript('manage_sdm', '''\
from Products.Sessions.interfaces import SessionDataManagerErr
sdm = context.session_data_manager
sdm.setTitle('Sessions')
result = [sdm.title, sdm.hasSessionDataContainer(), sdm.getContainerPath()]
try:
    sdm.setContainerPath('/temp_folder/session_data')
    result.append('set')
except SessionDataManagerErr:
    result.append('refused')
return repr(result)
''')
        self.assertEqual(
            self.withEach(lambda: self.get(self.browser(manager=True),
                                           '/manage_sdm')),
            {'stock': "['Sessions', True, '/temp_folder/session_data', "
                      "'set']",
             'beaker': "['Sessions', True, '', 'refused']"})

    def test_cookie_settings_of_the_browser_id_manager(self):
        # Stock's default manager sends no HttpOnly; ours does (README:
        # Security).
        self.addScript('cookie_settings', '''\
bim = context.session_data_manager.getBrowserIdManager()
return repr([bim.getCookiePath(), bim.getCookieDomain(),
             bim.getCookieLifeDays(), bim.getCookieHTTPOnly(),
             bim.getCookieSecure(), bim.getCookieSameSite(),
             bim.getAutoUrlEncoding(), bim.isUrlInBidNamespaces()])
''')
        self.assertEqual(
            self.withEach(lambda: self.get(self.browser(manager=True),
                                           '/cookie_settings')),
            {'stock': "['/', '', 0, False, False, 'Lax', False, False]",
             'beaker': "['/', '', 0, True, False, 'Lax', False, False]"})
