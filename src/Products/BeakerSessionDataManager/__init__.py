"""Zope sessions kept in Beaker stores: product initialization."""
import logging
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version

from .fixation import regenerate_session
from .permissions import add_session_data_managers


__all__ = ['initialize', 'regenerate_session']

logger = logging.getLogger('Products.BeakerSessionDataManager')


def initialize(context):
    from . import config
    from .sessiondata import BeakerSessionDataManager
    from .sessiondata import addBeakerSessionDataManager
    from .sessiondata import addBeakerSessionDataManagerForm

    context.registerClass(
        BeakerSessionDataManager,
        permission=add_session_data_managers,
        constructors=(addBeakerSessionDataManagerForm,
                      addBeakerSessionDataManager),
    )
    # Invalid options stop start-up here, with a message naming them.
    configuration = config.configure_from_zope_conf()
    if configuration is None:
        logger.info('No <product-config beaker> in zope.conf: Beaker '
                    'sessions work only under Beaker\'s SessionMiddleware.')
    else:
        logger.info('Beaker sessions: %s store (%s); shared settings '
                    'digest %s', configuration.type, configuration.store.name,
                    configuration.shared_digest())
    warn_about_collective_beaker()


def warn_about_collective_beaker():
    """collective.beaker 1.0b3, which 2.x needed, now breaks every request
    that starts a session (it reads Beaker's removed ``_path``)."""
    try:
        installed = version('collective.beaker')
    except PackageNotFoundError:
        return
    logger.warning(
        'collective.beaker %s is installed: it is no longer needed, and with '
        'Beaker >= 1.11 it fails every request that starts a session. '
        'Remove it from the instance.', installed)
