"""Zope sessions kept in Beaker stores: product initialization."""
import logging

from .permissions import add_session_data_managers


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
        logger.info('Beaker sessions: %s store (%s)', configuration.type,
                    configuration.store.name)
