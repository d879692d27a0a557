"""A Plone 6 site whose root ``session_data_manager`` is a Beaker one."""
import shutil

import Products.Sessions
from plone.app.testing import PLONE_FIXTURE
from plone.app.testing import FunctionalTesting
from plone.app.testing import PloneSandboxLayer
from plone.testing import zope

import Products.BeakerSessionDataManager
from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager.testing import \
    addBeakerSessionDataManager
from Products.BeakerSessionDataManager.testing import configure_file_sessions
from Products.BeakerSessionDataManager.testing import replaceSessionDataManager
from Products.BeakerSessionDataManager.tests import plone as plone_tests


class BeakerPloneLayer(PloneSandboxLayer):
    """PLONE_FIXTURE's site, with Beaker sessions in a file store.

    The product's ZCML is loaded as Zope loads it at start-up (with the
    login subscriber, since PAS is installed), the stock session products
    are installed too (the ZMI replaces their manager), and
    ``@@checkout`` runs the documentation's session code.
    """

    defaultBases = (PLONE_FIXTURE,)

    def setUpZope(self, app, configurationContext):
        self.tmpdir = self['beaker_dir'] = configure_file_sessions(
            'beakersessions-plone-')
        self.loadZCML(package=Products.Sessions)
        self.loadZCML(package=Products.BeakerSessionDataManager)
        self.loadZCML(package=plone_tests)
        for name in ('Products.Sessions', 'Products.Transience',
                     'Products.BeakerSessionDataManager'):
            zope.installProduct(app, name)
        replaceSessionDataManager(app, addBeakerSessionDataManager)

    def tearDownZope(self, app):
        for name in ('Products.BeakerSessionDataManager',
                     'Products.Transience', 'Products.Sessions'):
            zope.uninstallProduct(app, name)
        config.reset()
        del self['beaker_dir']
        shutil.rmtree(self.tmpdir, ignore_errors=True)


BEAKER_PLONE_FIXTURE = BeakerPloneLayer()
BEAKER_PLONE_FUNCTIONAL_TESTING = FunctionalTesting(
    bases=(BEAKER_PLONE_FIXTURE,), name='BeakerSessions:PloneFunctional')
