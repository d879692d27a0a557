"""The administrator's path in a real browser: headless Chromium, driven by
Selenium, against a real Zope instance.

The test logs in to the ZMI of a new instance that has the stock session
data manager, replaces it through the add form, watches the demo page count
visits across reloads and goes through the Settings, Status and Test tabs.
It saves a screenshot of each ZMI screen in a temporary directory, or in
docs/screenshots with ``UPDATE_SCREENSHOTS=1`` (the README shows those).

Needs Debian's chromium and chromium-driver packages (or the programs
that ``BEAKER_TEST_CHROMIUM`` and ``BEAKER_TEST_CHROMEDRIVER`` name) and the
selenium package (the ``test`` extra); without them the test is skipped,
naming what is missing, except in CI (``CI=true``), where it fails.
"""
import base64
import os
import shutil
import tempfile
import unittest

from Products.BeakerSessionDataManager.tests import instance
from Products.BeakerSessionDataManager.tests.servers import unavailable


# Debian's, unless the environment names others (GitHub's runners have
# Google Chrome and its ChromeDriver elsewhere).
CHROMIUM = os.environ.get('BEAKER_TEST_CHROMIUM', '/usr/bin/chromium')
CHROMEDRIVER = os.environ.get('BEAKER_TEST_CHROMEDRIVER',
                              '/usr/bin/chromedriver')
REPOSITORY = os.path.abspath(os.path.join(
    os.path.dirname(__file__), *['..'] * 4))
DEMO = os.path.join(REPOSITORY, 'demo')
SCREENSHOTS = os.path.join(REPOSITORY, 'docs', 'screenshots')
WINDOW = (1200, 860)
WAIT = 30
ADD_ITEM = 'Beaker Session Data Manager'

# The demo's front page and its scripts, as ``make run`` installs them.
DEMO_OBJECTS = '''
import os
demo = %(demo)r

def read(name):
    with open(os.path.join(demo, name), encoding='utf-8') as f:
        return f.read()

for id, filename in (('demo_counter', 'demo_counter.py'),
                     ('cart_update', 'cart_update.py')):
    app.manage_addProduct['PythonScripts'].manage_addPythonScript(
        id, file=read(filename))
    assert not app[id].errors, app[id].errors
if 'index_html' in app.objectIds():
    app.manage_delObjects(['index_html'])
app.manage_addProduct['PageTemplates'].manage_addPageTemplate(
    'index_html', text=read('front_page.zpt'))
''' % {'demo': DEMO}


def require_browser():
    """Skip (or fail in CI) naming what is missing."""
    for path, package in ((CHROMIUM, 'chromium'),
                          (CHROMEDRIVER, 'chromium-driver')):
        if not os.access(path, os.X_OK):
            unavailable('%s is not installed (apt-get install %s)'
                        % (path, package))
    try:
        import selenium  # noqa: F401
    except ImportError:
        unavailable('selenium is not installed (pip install selenium)')


def start_chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ('--headless=new', '--no-sandbox',
                     '--disable-dev-shm-usage', '--disable-gpu',
                     '--window-size=%d,%d' % WINDOW):
        options.add_argument(argument)
    return webdriver.Chrome(options=options,
                            service=Service(executable_path=CHROMEDRIVER))


class BrowserTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if not os.path.isdir(DEMO):
            # An installed package (a wheel) has no checkout around it.
            raise unittest.SkipTest(
                'needs the demo/ of a checkout: %s is missing' % DEMO)
        require_browser()
        cls.secret = instance.new_secret()
        cls.zope = instance.ZopeInstance({
            'session.type': 'file',
            'session.secret': cls.secret,
        }, threads=2)
        try:
            cls.zope.setup(instance.STOCK_SESSION_DATA_MANAGER, DEMO_OBJECTS)
            cls.zope.start()
        except BaseException:
            cls.zope.cleanup()
            raise
        cls.addClassCleanup(cls.zope.cleanup)
        if os.environ.get('UPDATE_SCREENSHOTS'):
            cls.screenshots = SCREENSHOTS
            os.makedirs(SCREENSHOTS, exist_ok=True)
        else:
            cls.screenshots = tempfile.mkdtemp(prefix='screenshots-')
            cls.addClassCleanup(shutil.rmtree, cls.screenshots, True)

    def setUp(self):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = start_chromium()
        self.addCleanup(self.driver.quit)
        self.wait = WebDriverWait(self.driver, WAIT)

    def find(self, css):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        return self.wait.until(
            EC.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def log_in(self):
        """Send the ZMI's basic auth credentials with every request, as a
        browser does once the user has answered its login prompt."""
        token = base64.b64encode(('%s:%s' % instance.ADMIN).encode()).decode()
        self.driver.execute_cdp_cmd('Network.enable', {})
        self.driver.execute_cdp_cmd('Network.setExtraHTTPHeaders', {
            'headers': {'Authorization': 'Basic ' + token}})

    def screenshot(self, name):
        """Save the whole page, not just the window, as ``name``.png."""
        size = self.driver.execute_cdp_cmd(
            'Page.getLayoutMetrics', {})['cssContentSize']
        shot = self.driver.execute_cdp_cmd('Page.captureScreenshot', {
            'format': 'png', 'captureBeyondViewport': True,
            'clip': {'x': 0, 'y': 0, 'width': size['width'],
                     'height': size['height'], 'scale': 1}})
        path = os.path.join(self.screenshots, name + '.png')
        with open(path, 'wb') as f:
            f.write(base64.b64decode(shot['data']))
        self.assertGreater(os.path.getsize(path), 10000, path)

    def open_tab(self, label):
        from selenium.webdriver.common.by import By

        self.driver.find_element(
            By.CSS_SELECTOR, '#tabs').find_element(
            By.LINK_TEXT, label).click()
        self.wait.until(lambda driver: driver.find_element(
            By.CSS_SELECTOR, '#tabs a.active').text == label)

    def visits(self):
        return int(self.find('#visits').text)

    def test_replace_the_stock_manager_and_use_the_tabs(self):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        driver = self.driver
        self.log_in()
        driver.get(self.zope.url('manage_main'))
        self.assertIn('session_data_manager', self.find('main').text)

        # Add the manager from the ZMI's "Select type to add" menu; the
        # ZMI shows the add form in a dialog.
        Select(self.find('#addItemSelect')).select_by_visible_text(ADD_ITEM)
        replace = self.find('#zmi-modal #replace')
        self.assertTrue(replace.is_selected())
        self.assertIn('Session Data Manager', self.find('#zmi-modal').text)
        self.screenshot('add-form')
        driver.find_element(
            By.CSS_SELECTOR, '#zmi-modal input[type=submit]').click()
        self.wait.until(lambda driver: 'manage_main' in driver.current_url
                        or 'manage_workspace' in driver.current_url)
        row = self.find('main').text
        self.assertIn('session_data_manager', row)

        # A visitor's counter rises across reloads; the cart keeps items.
        driver.get(self.zope.url(''))
        first = self.visits()
        self.assertEqual(first, 1)  # The ZMI started no session.
        for expected in (first + 1, first + 2):
            driver.refresh()
            self.wait.until(lambda driver: self.visits() == expected)
        self.find('#item').send_keys('a teapot')
        driver.find_element(
            By.CSS_SELECTOR, 'button[value=add]').click()
        self.assertEqual(self.find('#cart').text, 'a teapot')
        self.assertEqual(self.visits(), first + 3)

        # Settings: the file store, configured in zope.conf.
        driver.get(self.zope.url('session_data_manager/manage_main'))
        settings = self.find('#settings').text
        self.assertIn('session.type file zope.conf', settings)
        self.assertIn('session.secret ******** zope.conf', settings)
        self.assertNotIn(self.secret, driver.page_source)
        self.screenshot('settings')

        self.open_tab('Status')
        self.assertIn('is reachable', self.find('#store-reachable').text)
        self.assertIn('Reachable yes', self.find('#store-status').text)
        self.screenshot('status')

        self.open_tab('Test')
        self.find('#test-form input[type=submit]').click()
        self.assertIn('The session works', self.find('#test-verdict').text)
        self.assertEqual(self.find('#tabs a.active').text, 'Test')
        self.screenshot('test')

        # The test used the administrator's own session, which kept its
        # data.
        driver.get(self.zope.url(''))
        self.assertEqual(self.visits(), first + 4)
        self.assertEqual(self.find('#cart').text, 'a teapot')
