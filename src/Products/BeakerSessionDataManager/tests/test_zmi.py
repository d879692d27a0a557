"""The ZMI through the publisher, as a Manager: add form, Settings, Status,
Test."""
import logging
import os
import secrets
import sys
import types
import unittest

import webtest
from beaker.middleware import SessionMiddleware

import transaction
from OFS.SimpleItem import SimpleItem
from plone.testing import zope
from Products.Sessions.SessionDataManager import SessionDataManagerTraverser
from ZPublisher.BeforeTraverse import registerBeforeTraverse

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager.testing import \
    BEAKER_SESSIONS_FUNCTIONAL_TESTING
from Products.BeakerSessionDataManager.testing import MANAGER_NAME
from Products.BeakerSessionDataManager.testing import MANAGER_PASSWORD
from Products.BeakerSessionDataManager.testing import \
    STOCK_SESSIONS_FUNCTIONAL_TESTING
from Products.BeakerSessionDataManager.testing import ZopeWSGIApp
from Products.BeakerSessionDataManager.testing import browser
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests.servers import RedisServer
from Products.BeakerSessionDataManager.tests.servers import free_port
from Products.BeakerSessionDataManager.tests.test_manager import COOKIE
from Products.BeakerSessionDataManager.tests.test_manager import COUNTER
from Products.BeakerSessionDataManager.tests.test_manager import add_script
from Products.BeakerSessionDataManager.tests.test_manager import session_files


ADD = '/manage_addProduct/BeakerSessionDataManager/addBeakerSessionDataManager'
ADD_FORM = ADD + 'Form'
SDM = 'session_data_manager'
BEAKER = 'Beaker Session Data Manager'
STOCK_HOOK = (50, 'SessionDataManager')
BEAKER_HOOK = (50, 'BeakerSessionDataManager')
# Where the stock product's classes would be; removed from sys.modules
# to make the objects stored from them broken, as after uninstalling.
REMOVED_MODULE = 'Products.RemovedSessions.SessionDataManager'


def manager_browser():
    manager = browser()
    manager.authorization = ('Basic', (MANAGER_NAME, MANAGER_PASSWORD))
    return manager


def text(element):
    """The text of an HTML element as a browser shows it."""
    return ' '.join(element.get_text(' ').split())


def hooks():
    with zope.zopeApp() as app:
        return set(getattr(app, '__before_traverse__', {}))


def meta_type():
    with zope.zopeApp() as app:
        return app[SDM].meta_type


class ZMITestCase(unittest.TestCase):

    def setUp(self):
        self.app = self.layer['app']
        add_script(self.app, 'counter', COUNTER)
        add_script(self.app, 'plain', "return 'no session here'")
        transaction.commit()
        self.manager = manager_browser()

    def assertSessionsWork(self):
        visitor = browser()
        self.assertEqual(visitor.get('/counter').text, '1')
        self.assertEqual(visitor.get('/counter').text, '2')
        self.assertIn(COOKIE, visitor.cookies)


class AddFormTests(ZMITestCase):
    """Replacing the stock session data manager in one step."""

    layer = STOCK_SESSIONS_FUNCTIONAL_TESTING

    def test_form_offers_replace_when_the_id_is_taken(self):
        form = self.manager.get(ADD_FORM).forms['add-form']
        self.assertEqual(form['id'].value, SDM)
        self.assertEqual(form['replace:boolean'].checked, True)
        page = self.manager.get(ADD_FORM).text
        self.assertIn('Replace the existing', page)
        self.assertIn('(<em>Session Data Manager</em>)', page)

    def test_replace_is_unticked_when_the_id_is_free(self):
        self.app._delObject(SDM)
        transaction.commit()
        form = self.manager.get(ADD_FORM).forms['add-form']
        self.assertEqual(form['replace:boolean'].checked, False)

    def test_replace_the_stock_manager(self):
        self.assertIn(STOCK_HOOK, hooks())
        form = self.manager.get(ADD_FORM).forms['add-form']
        response = form.submit()
        self.assertEqual(response.status_int, 302)
        self.assertTrue(response.location.endswith('/manage_workspace'))
        self.assertEqual(meta_type(), BEAKER)
        self.assertEqual(hooks(), {BEAKER_HOOK})
        self.assertSessionsWork()

    def test_without_replace_the_taken_id_is_a_clear_error(self):
        form = self.manager.get(ADD_FORM).forms['add-form']
        form['replace:boolean'].checked = False
        response = form.submit(status=400)
        self.assertIn('The id "session_data_manager" is already in use',
                      response.text)
        self.assertIn('Tick "Replace the existing', response.text)
        self.assertNotIn('Traceback', response.text)
        # The form again, with what was typed, ready to try again.
        self.assertEqual(response.forms['add-form']['id'].value, SDM)
        self.assertEqual(meta_type(), 'Session Data Manager')
        self.assertIn(STOCK_HOOK, hooks())

    def test_invalid_id_is_a_clear_error(self):
        for id, message in (
                ('bad<id>', 'The id "bad&lt;id&gt;" contains characters'),
                ('', 'Empty or invalid id specified'),
                ('manage_main', '"manage_main" is invalid - it is already')):
            response = self.manager.post(
                ADD, {'id': id, 'replace:boolean': '1'}, status=400)
            error = str(response.html.find(id='add-error'))
            self.assertIn(message, error)
        self.assertEqual(meta_type(), 'Session Data Manager')

    def test_replacing_needs_the_delete_permission(self):
        self.app._addRole('Adder')
        for permission in ('Add Session Data Manager',
                           'View management screens'):
            self.app.manage_permission(permission, ['Manager', 'Adder'])
        self.app.acl_users.userFolderAddUser('adder', 'pw', ['Adder'], [])
        transaction.commit()
        adder = browser()
        adder.authorization = ('Basic', ('adder', 'pw'))
        response = adder.post(ADD, {'id': SDM, 'replace:boolean': '1'},
                              status=400)
        self.assertIn('Replacing "session_data_manager" needs the '
                      'permission "Delete objects" here.', response.text)
        self.assertEqual(meta_type(), 'Session Data Manager')

    def test_get_changes_nothing(self):
        self.manager.get(ADD, {'id': SDM, 'replace:boolean': '1'},
                         status=403)
        self.assertEqual(meta_type(), 'Session Data Manager')

    def test_hook_whose_manager_is_already_gone(self):
        # The manager went without its manage_beforeDelete: its hook stays,
        # logs a warning on every request and publishes no session.
        self.app._delObject(SDM, suppress_events=True)
        transaction.commit()
        self.assertIn(STOCK_HOOK, hooks())
        with self.assertLogs('SessionDataManager', logging.WARNING):
            browser().get('/plain')
        with self.assertLogs(level=logging.ERROR):
            browser().get('/counter', status=500)
        self.manager.get(ADD_FORM).forms['add-form'].submit(status=302)
        self.assertEqual(meta_type(), BEAKER)
        self.assertEqual(hooks(), {BEAKER_HOOK})
        self.assertSessionsWork()

    def test_stale_hook_after_the_stock_product_is_removed(self):
        self.install_removed_product()
        # Every request logs an error, every page using the session fails.
        with self.assertLogs('ZPublisher', logging.ERROR) as logged:
            self.assertEqual(browser().get('/plain').status_int, 200)
        self.assertIn('is not callable', logged.output[0])
        with self.assertLogs(level=logging.ERROR):
            browser().get('/counter', status=500)
        page = self.manager.get(ADD_FORM)
        self.assertIn('There is an object with this id', page.text)
        page.forms['add-form'].submit(status=302)
        self.assertEqual(meta_type(), BEAKER)
        self.assertEqual(hooks(), {BEAKER_HOOK})
        with self.assertNoLogs(level=logging.WARNING):
            self.assertSessionsWork()

    def install_removed_product(self):
        """The root as a product leaves it once it is uninstalled: its
        manager and its traversal hook stored, their classes gone."""
        package = types.ModuleType(REMOVED_MODULE.rpartition('.')[0])
        module = types.ModuleType(REMOVED_MODULE)
        package.SessionDataManager = module

        class SessionDataManager(SimpleItem):
            meta_type = 'Removed Session Data Manager'

        class Traverser(SessionDataManagerTraverser):
            pass
        for cls in (SessionDataManager, Traverser):
            cls.__module__ = REMOVED_MODULE
            cls.__qualname__ = cls.__name__
            setattr(module, cls.__name__, cls)
        sys.modules[package.__name__] = package
        sys.modules[REMOVED_MODULE] = module
        try:
            self.app._delObject(SDM)
            manager = SessionDataManager()
            manager.id = SDM
            self.app._setObject(SDM, manager)
            registerBeforeTraverse(self.app, Traverser('SESSION', SDM),
                                   STOCK_HOOK[1], STOCK_HOOK[0])
            transaction.commit()
        finally:
            del sys.modules[REMOVED_MODULE], sys.modules[package.__name__]


class TabsTestCase(ZMITestCase):

    layer = BEAKER_SESSIONS_FUNCTIONAL_TESTING

    def tab(self, name, **kw):
        return self.manager.get('/%s/%s' % (SDM, name), **kw)

    def restore_configuration(self):
        """Put the layer's configuration back after the test."""
        self.addCleanup(setattr, config, '_current', config._current)

    def configure(self, settings, source='zope.conf'):
        """Make ``settings`` the configuration for this test."""
        self.restore_configuration()
        return config.configure(settings, source=source)

    def unconfigure(self):
        """No <product-config beaker> for this test."""
        self.restore_configuration()
        config.reset()


class TabsTests(TabsTestCase):

    def test_tabs_are_listed(self):
        page = self.tab('manage_main')
        tabs = [(link['href'], link.get_text()) for link in
                page.html.find(id='tabs').find_all('a')]
        self.assertEqual(tabs, [('manage_main', 'Settings'),
                                ('manage_status', 'Status'),
                                ('manage_test', 'Test'),
                                ('manage_access', 'Security')])

    def test_tabs_need_the_management_permission(self):
        for name in ('manage_main', 'manage_status', 'manage_test'):
            response = browser().get('/%s/%s' % (SDM, name),
                                     expect_errors=True)
            self.assertEqual(response.status_int, 401, name)
        response = browser().post('/%s/manage_testSession' % SDM,
                                  expect_errors=True)
        self.assertEqual(response.status_int, 401)


class SettingsTabTests(TabsTestCase):

    def settings(self, page):
        return {row.split('|')[1]: row.split('|')[2:]
                for row in self.rows(page)}

    @staticmethod
    def rows(page):
        """'label|option|value|source' for each row of the table."""
        table = page.html.find(id='settings')
        return ['|'.join(cell.get_text(' ', strip=True)
                         for cell in tr.find_all('td'))
                for tr in table.find('tbody').find_all('tr')]

    def test_options_with_their_sources(self):
        data = os.path.join(self.layer['beaker_dir'], 'data')
        self.configure({
            'session.type': 'file',
            'session.data_dir': data,
            'beaker.session.secret': secrets.token_hex(20),
            'session.samesite': 'Strict',
        })
        page = self.tab('manage_main')
        self.assertIn('<product-config beaker>', page.html.find(
            id='origin').get_text())
        rows = self.rows(page)
        self.assertEqual(rows[0], 'Store type|session.type|file|zope.conf')
        shown = self.settings(page)
        self.assertEqual(shown['session.data_dir'], [data, 'zope.conf'])
        self.assertEqual(shown['session.secret'], ['********', 'zope.conf'])
        self.assertEqual(shown['session.samesite'], ['Strict', 'zope.conf'])
        self.assertEqual(shown['session.httponly'], ['true', 'default'])
        self.assertEqual(shown['session.secure'], ['false', 'default'])
        self.assertEqual(shown['session.cookie_path'], ['/', 'default'])
        self.assertEqual(shown['session.cookie_domain'],
                         ['(not set)', 'default'])
        self.assertEqual(shown['session.timeout'], ['1200', 'default'])
        self.assertEqual(shown['session.data_serializer'],
                         ['pickle', 'default'])
        self.assertEqual(shown['session.key'],
                         ['beaker.session.id', 'default'])

    def test_store_url_credentials_are_masked(self):
        self.configure({
            'session.type': 'ext:redis',
            'session.url': 'redis://user:hunter2@127.0.0.1:%d/0'
                           % free_port(),
            'session.secret': secrets.token_hex(20),
        })
        page = self.tab('manage_main')
        self.assertNotIn('hunter2', page.text)
        self.assertEqual(self.settings(page)['session.url'][1], 'zope.conf')
        self.assertIn('***@127.0.0.1', page.text)

    def test_unconfigured(self):
        self.unconfigure()
        page = self.tab('manage_main')
        self.assertIn('add a &lt;product-config beaker&gt; block',
                      page.text)
        self.assertIsNone(page.html.find(id='settings'))

    def middleware_manager(self, secret):
        pipeline = SessionMiddleware(ZopeWSGIApp(), {
            'session.type': 'file',
            'session.data_dir': os.path.join(
                self.layer['beaker_dir'], 'middleware'),
            'session.key': 'mw_session',
            'session.secret': secret,
            'session.httponly': 'true',
        })
        manager = webtest.TestApp(pipeline,
                                  extra_environ={'HTTP_HOST': 'nohost'})
        manager.authorization = ('Basic', (MANAGER_NAME, MANAGER_PASSWORD))
        return manager

    def test_middleware(self):
        manager = self.middleware_manager('the middleware secret, long enough')
        page = manager.get('/%s/manage_main' % SDM)
        self.assertIsNone(page.html.find(id='middleware-error'))
        self.assertIn("Beaker's SessionMiddleware", page.html.find(
            id='origin').get_text())
        shown = self.settings(page)
        middleware = "Beaker's SessionMiddleware (zope.ini)"
        self.assertEqual(shown['session.key'], ['mw_session', middleware])
        self.assertEqual(shown['session.secret'], ['********', middleware])
        self.assertEqual(shown['session.httponly'], ['true', middleware])
        self.assertEqual(shown['session.secure'], ['false', 'default'])
        self.assertNotIn('long enough', page.text)
        # Showing the settings started no session.
        self.assertEqual(page.headers.getall('Set-Cookie'), [])

    def test_middleware_with_a_weak_secret(self):
        manager = self.middleware_manager('short')
        for tab in ('manage_main', 'manage_status'):
            page = manager.get('/%s/%s' % (SDM, tab))
            self.assertIn("Beaker's SessionMiddleware (zope.ini): "
                          "beaker.session.secret: too weak",
                          page.html.find(id='middleware-error').get_text())

    def test_request_name_change_is_post_only(self):
        self.manager.get('/%s/manage_changeBeakerSDM' % SDM,
                         {'requestName': 'OTHER'}, status=403)
        form = self.tab('manage_main').forms['settings-form']
        form['requestName'] = 'BEAKER'
        response = form.submit()
        self.assertIn('Changes saved.', response.text)
        with zope.zopeApp() as app:
            self.assertEqual(app[SDM].getRequestName(), 'BEAKER')


# Redis commands that write, of those the product's store sends.
REDIS_WRITES = ('set', 'setex', 'del', 'unlink', 'expire', 'eval', 'evalsha',
                'fcall')


class StatusTabTests(TabsTestCase):

    def status(self):
        page = self.tab('manage_status')
        return page, page.html.find(id='store-status').get_text(
            ' ', strip=True)

    def test_reachable_store(self):
        page, before = self.status()
        self.assertIn('is reachable', page.html.find(
            id='store-reachable').get_text())
        self.assertIn('Reachable yes', before)
        self.assertRegex(before, r'Round trip \d+\.\d ms')
        self.assertIn('Last cleanup of expired sessions never recorded',
                      before)
        count = int(before.split('Stored sessions ')[1].split()[0])
        browser().get('/counter')
        self.assertIn('Stored sessions %d ' % (count + 1), self.status()[1])

    def test_shared_digest_and_sessions_refused(self):
        # What tells an administrator that instances sharing the store have
        # other keys or serializers.
        from Products.BeakerSessionDataManager.outages import warning_log
        self.addCleanup(setattr, warning_log, 'totals', warning_log.totals)
        warning_log.totals = {'signature': 3, 'clock': 2}
        digest = config.get_configuration().shared_digest()
        text = ' '.join(self.status()[1].split())
        self.assertIn('Shared settings digest %s The same on every Zope '
                      'instance' % digest, text)
        self.assertIn('Sessions refused since start-up 3 cookies signed or '
                      'encrypted with another key, 0 records', text)
        self.assertIn('Sessions last accessed ahead of this clock 2 since '
                      'start-up', text)

    def redis_writes(self, server):
        """How many commands that write the Redis server has run."""
        stats = server.client().info('commandstats')
        return {name: stats[name]['calls'] for name in stats
                if name.split('_', 1)[1] in REDIS_WRITES}

    def test_showing_the_tab_writes_nothing(self):
        server = servers.shared_redis()
        self.configure({'session.type': 'ext:redis',
                        'session.url': server.url,
                        'session.secret': secrets.token_hex(20)})
        self.status()  # The store's connections are made.
        before = self.redis_writes(server)
        page, text = self.status()
        self.assertIn('Reachable yes', text)
        self.assertRegex(text, r'Round trip \d+\.\d ms \(a read\)')
        self.assertIn('Writable not checked', text)
        self.assertEqual(self.redis_writes(server), before)
        self.assertEqual(page.forms['write-check-form'].method.upper(),
                         'POST')

    def test_check_writing(self):
        before = session_files(self.layer)
        page = self.tab('manage_status').forms['write-check-form'].submit()
        text = ' '.join(page.html.find(id='store-status').get_text(
            ' ', strip=True).split())
        self.assertRegex(text, r'Writable yes, round trip \d+\.\d ms')
        self.assertIn('class="nav-link active" href="manage_status"',
                      page.text)
        # The probe left nothing behind.
        self.assertEqual(session_files(self.layer), before)

    def test_check_writing_needs_a_post_and_the_permission(self):
        self.tab('manage_checkStoreWrite', status=403)
        anonymous = browser()
        response = anonymous.post('/%s/manage_checkStoreWrite' % SDM,
                                  status='*')
        self.assertEqual(response.status_int, 401)

    def test_check_writing_a_read_only_store(self):
        # A Redis replica (of a primary that is gone) serves reads and
        # refuses writes: the tab says the store is reachable, and the
        # write check why it cannot be written.
        primary = free_port()
        with servers.RedisServer(None, '--replicaof', '127.0.0.1',
                                 str(primary)) as replica:
            self.configure({'session.type': 'ext:redis',
                            'session.url': replica.url,
                            'session.secret': secrets.token_hex(20)})
            page = self.tab('manage_status')
            self.assertIn('Reachable yes', page.html.find(
                id='store-status').get_text(' ', strip=True))
            page = page.forms['write-check-form'].submit()
            writable = ' '.join(page.html.find(
                id='store-writable').get_text(' ', strip=True).split())
            self.assertIn('Writable no:', writable)
            self.assertIn('READONLY', writable)

    def test_unreachable_store_shows_the_error(self):
        port = free_port()  # nobody listens there
        self.configure({
            'session.type': 'ext:redis',
            'session.url': 'redis://127.0.0.1:%d/0' % port,
            'session.secret': secrets.token_hex(20),
        })
        page = self.tab('manage_status')
        error = page.html.find(id='store-unreachable').get_text(' ')
        self.assertIn('cannot be reached', error)
        self.assertIn(str(port), error)
        self.assertIn('Connection', error)
        self.assertIn('Reachable no', page.html.find(
            id='store-status').get_text(' ', strip=True))

    def test_unreachable_sql_store_shows_the_error(self):
        # The record of the last cleanup is in the store too: it is
        # unknown, and the page names the error instead of failing.
        port = free_port()  # nobody listens there
        self.configure({
            'session.type': 'ext:database',
            'session.url': 'postgresql+psycopg2://zope@127.0.0.1:%d/none'
                           % port,
            'session.secret': secrets.token_hex(20),
        })
        page = self.tab('manage_status')
        error = page.html.find(id='store-unreachable').get_text(' ')
        self.assertIn('cannot be reached', error)
        self.assertIn('OperationalError', error)
        self.assertIn(str(port), error)
        self.assertIn('Last cleanup of expired sessions unknown: '
                      'OperationalError', text(page.html.find(
                          id='store-status')))

    def test_a_count_the_store_refuses_is_named(self):
        # A Redis user whose access list refuses SCAN: the store works,
        # and the page says why the sessions were not counted.
        with RedisServer() as server:
            server.client().acl_setuser(
                'zope', enabled=True, passwords=['+zope-secret'],
                keys=['*'], channels=['*'], commands=['+@all', '-scan'])
            self.configure({
                'session.type': 'ext:redis',
                'session.url': 'redis://zope:zope-secret@127.0.0.1:%d/0'
                               % server.port,
                'session.secret': secrets.token_hex(20),
            })
            page, shown = self.status()
        self.assertIsNotNone(page.html.find(id='store-reachable'))
        self.assertIn('Stored sessions not counted: ReplyError: NOPERM',
                      shown)

    def test_unconfigured(self):
        self.unconfigure()
        page = self.tab('manage_status')
        self.assertIn('not configured', page.html.find(
            id='status-unconfigured').get_text())

    def test_cookie_store_has_nothing_to_check(self):
        self.configure({
            'session.type': 'cookie',
            'session.validate_key': secrets.token_hex(20),
            'session.encrypt_key': secrets.token_hex(20),
        })
        page = self.tab('manage_status')
        self.assertIn('no store on the server to check',
                      text(page.html.find(id='status-cookie')))
        self.assertIsNone(page.html.find(id='store-status'))


class TestTabTests(TabsTestCase):

    def test_get_shows_the_form_and_writes_nothing(self):
        before = session_files(self.layer)
        page = self.tab('manage_test')
        form = page.forms['test-form']
        self.assertEqual(form.action, 'manage_testSession')
        self.assertEqual(form.method.upper(), 'POST')
        self.assertIsNone(page.html.find(id='test-steps'))
        self.assertNotIn(COOKIE, self.manager.cookies)
        self.assertEqual(session_files(self.layer), before)
        self.manager.get('/%s/manage_testSession' % SDM, status=403)
        self.assertNotIn(COOKIE, self.manager.cookies)
        self.assertEqual(session_files(self.layer), before)

    def test_post_round_trips_a_value_in_the_own_session(self):
        self.manager.get('/counter')
        page = self.tab('manage_test').forms['test-form'].submit()
        self.assertIn('The session works', page.html.find(
            id='test-verdict').get_text())
        self.assertIn('class="nav-link active" href="manage_test"',
                      page.text)
        steps = [[cell.get_text(strip=True) for cell in tr.find_all('td')]
                 for tr in page.html.find(id='test-steps').find_all('tr')
                 if tr.find('td')]
        self.assertEqual([step[:2] for step in steps],
                         [['Write', 'OK'], ['Read', 'OK'],
                          ['Delete', 'OK']])
        self.assertIn('file session store', steps[1][3])
        # The session is the administrator's own: its data is intact and
        # the probe is gone.
        self.assertEqual(self.manager.get('/counter').text, '2')
        session_id = self.manager.cookies[COOKIE][-32:]
        record = config.get_configuration().store.load(session_id)
        self.assertEqual(record['n'], 2)
        self.assertNotIn('_beaker_zmi_test', record)

    def test_cookie_store(self):
        self.configure({
            'session.type': 'cookie',
            'session.validate_key': secrets.token_hex(20),
            'session.encrypt_key': secrets.token_hex(20),
        })
        page = self.tab('manage_test').forms['test-form'].submit()
        self.assertIn('The session works', page.html.find(
            id='test-verdict').get_text())
        self.assertIn(COOKIE, self.manager.cookies)

    def test_store_outage_is_reported_not_raised(self):
        data = os.path.join(self.layer['beaker_dir'], 'data')
        os.rename(data, data + '.away')
        self.addCleanup(os.rename, data + '.away', data)
        with open(data, 'w'):
            pass
        self.addCleanup(os.remove, data)
        page = self.tab('manage_test').forms['test-form'].submit()
        self.assertEqual(page.status_int, 200)
        steps = page.html.find(id='test-steps').get_text(' ', strip=True)
        self.assertIn('Write Failed', steps)
        self.assertIn('SessionStoreError', steps)
        self.assertNotIn('Read', steps)
        self.assertIn('failed', page.html.find(id='test-verdict').get_text())
