"""Read and check the Beaker session options once, at start-up.

The options come from ``<product-config beaker>`` in zope.conf, with the
``session.`` or ``beaker.session.`` prefixes Beaker's own middleware
accepts.  They are coerced and checked here, so that a mistake stops
Zope at start-up with a message naming the option instead of failing on
some visitor's request later.
"""
import logging
import os

from beaker.cache import clsmap
from beaker.util import coerce_session_params

from .browserid import SessionCookie
from .interfaces import ConfigurationError
from .session import WRITE_GRANULARITY
from .store import BeakerStore


logger = logging.getLogger('Products.BeakerSessionDataManager')

PREFIXES = ('beaker.session.', 'session.')
MIN_SECRET_LENGTH = 32
# Secrets copied from old documentation or examples.
PLACEHOLDER_SECRETS = frozenset([
    'secret', 'changeme', 'change-me', 'change_me', 'mysecret', 'somesecret',
    'your-secret', 'yoursecret', 'please-change-me', 'beaker',
])
SAMESITE_VALUES = {'lax': 'Lax', 'strict': 'Strict', 'none': 'None'}
SERVER_SIDE_TYPES = ('memory', 'file', 'dbm', 'ext:redis', 'ext:rediscluster',
                     'ext:memcached', 'ext:database', 'ext:sqla')
# Options that shape the session and its cookie; everything else is handed
# to the store (Beaker's namespace manager), as Beaker itself does.
SESSION_OPTIONS = frozenset([
    'type', 'data_dir', 'key', 'secret', 'timeout', 'cookie_expires',
    'cookie_domain', 'cookie_path', 'domain', 'path', 'secure', 'httponly',
    'samesite', 'data_serializer', 'encrypt_key', 'validate_key',
    'encrypt_nonce_bits', 'crypto_type', 'save_accessed_time',
    'invalidate_corrupt', 'auto', 'id', 'use_cookies', 'webtest_varname',
    'log_file', 'write_granularity',
])
DEFAULTS = {
    'type': 'file',
    'key': 'beaker.session.id',
    'timeout': 1200,
    'httponly': True,
    'samesite': 'Lax',
    'secure': False,
    'cookie_path': '/',
    'cookie_domain': None,
    'cookie_expires': True,
    'data_serializer': 'pickle',
    'write_granularity': WRITE_GRANULARITY,
}

_current = None


class SessionConfiguration:
    """The checked options and the objects built from them."""

    def __init__(self, settings, source='zope.conf', var_dir=None):
        self.source = source
        self.options = options = parse(settings)
        self.type = options['type']
        self.timeout = options['timeout'] or None
        self.write_granularity = options['write_granularity']
        if self.type == 'cookie':
            raise ConfigurationError(
                'session.type: the client-side "cookie" store is not '
                'supported yet; choose a server-side store.')
        if self.type not in SERVER_SIDE_TYPES:
            raise ConfigurationError(
                'session.type: unknown store %r; choose one of %s.'
                % (self.type, ', '.join(SERVER_SIDE_TYPES)))
        check_secret(options.get('secret'))
        if options.get('data_serializer') not in ('pickle', 'json'):
            raise ConfigurationError(
                'session.data_serializer: must be "pickle" or "json", not %r.'
                % options.get('data_serializer'))
        self._default_directories(var_dir)
        self.cookie = SessionCookie(
            name=options['key'],
            secret=options['secret'],
            path=options.get('path') or options['cookie_path'],
            domain=options.get('domain') or options['cookie_domain'],
            secure=options['secure'],
            httponly=options['httponly'],
            samesite=options['samesite'],
            expires=options['cookie_expires'],
        )
        self.store = self._make_store()

    def _default_directories(self, var_dir):
        options = self.options
        if self.type not in ('file', 'dbm'):
            return
        if not options.get('data_dir'):
            if var_dir is None:
                raise ConfigurationError(
                    'session.data_dir: required for session.type %s.'
                    % self.type)
            options['data_dir'] = os.path.join(var_dir, 'sessions', 'data')
            options.setdefault(
                'lock_dir', os.path.join(var_dir, 'sessions', 'lock'))

    def _make_store(self):
        options = self.options
        namespace_args = {name: value for name, value in options.items()
                          if name not in SESSION_OPTIONS}
        try:
            namespace_class = clsmap[self.type]
        except Exception as exc:
            raise ConfigurationError(
                'session.type: the %s store cannot be used: %s'
                % (self.type, exc))
        return BeakerStore(
            namespace_class,
            namespace_args,
            data_dir=options.get('data_dir'),
            serializer=options['data_serializer'],
            timeout=self.timeout,
            encrypt_key=options.get('encrypt_key'),
            validate_key=options.get('validate_key'),
            name=self.store_name(),
        )

    def store_name(self):
        """How messages name the store: its type and where it is."""
        options = self.options
        where = mask_url(options.get('url')) or options.get('data_dir')
        return '%s session store%s' % (
            self.type, ' at %s' % where if where else '')

    def describe(self):
        """The effective options, with secrets masked, for display."""
        shown = {}
        for name, value in sorted(self.options.items()):
            if name in ('secret', 'encrypt_key', 'validate_key') and value:
                value = '*' * 8
            elif name == 'url':
                value = mask_url(value)
            shown['session.' + name] = value
        return shown


def mask_url(url):
    """Hide the credentials in a store URL."""
    if isinstance(url, str) and '@' in url:
        scheme, _, rest = url.partition('://')
        return '%s://***@%s' % (scheme, rest.rpartition('@')[2])
    return url


def parse(settings):
    """Strip the prefixes, apply the defaults, coerce every value."""
    options = dict(DEFAULTS)
    for name, value in settings.items():
        for prefix in PREFIXES:
            if name.startswith(prefix):
                options[name[len(prefix):]] = value
                break
    for name in list(options):
        options[name] = coerce_option(name, options[name])
    return options


def coerce_option(name, value):
    """Coerce one option, naming it if the value is not acceptable."""
    if isinstance(value, str):
        value = value.strip()
    try:
        if name == 'write_granularity' or name == 'timeout':
            value = int(value) if value not in (None, '') else 0
            if value < 0:
                raise ValueError('must not be negative')
            return value
        if name == 'samesite':
            if value in (None, '', False) or str(value).lower() == 'false':
                return None
            return SAMESITE_VALUES[str(value).lower()]
        return coerce_session_params({name: value})[name]
    except KeyError:
        raise ConfigurationError(
            'session.samesite: must be Lax, Strict or None, not %r.' % value)
    except Exception as exc:
        raise ConfigurationError(
            'session.%s: invalid value %r (%s)' % (name, value, exc))


def check_secret(secret):
    """A signed session id is only as good as the secret signing it."""
    if not secret:
        raise ConfigurationError(
            'session.secret: required; set it to a random string of at '
            'least %d characters, the same for every Zope instance that '
            'shares the session store.' % MIN_SECRET_LENGTH)
    if len(secret) < MIN_SECRET_LENGTH or \
            secret.lower() in PLACEHOLDER_SECRETS or len(set(secret)) < 8:
        raise ConfigurationError(
            'session.secret: too weak (%d characters); use a random string '
            'of at least %d characters, e.g. the output of: python3 -c '
            '"import secrets; print(secrets.token_urlsafe(36))"'
            % (len(secret), MIN_SECRET_LENGTH))


def configure(settings, source='test', var_dir=None):
    """Check ``settings`` and make them the process-wide configuration."""
    global _current
    _current = SessionConfiguration(settings, source=source, var_dir=var_dir)
    return _current


def configure_from_zope_conf():
    """Read ``<product-config beaker>``; None if zope.conf has no such block.

    Raises ConfigurationError, which stops start-up, for invalid options.
    """
    from App.config import getConfiguration
    zope_config = getConfiguration()
    settings = (getattr(zope_config, 'product_config', None) or {}).get(
        'beaker')
    if settings is None:
        return None
    var_dir = getattr(zope_config, 'clienthome', None)
    return configure(settings, source='zope.conf', var_dir=var_dir)


def reset():
    """Forget the configuration (tests)."""
    global _current
    _current = None


def get_configuration():
    """The configuration in force, or ConfigurationError if there is none."""
    if _current is None:
        raise ConfigurationError(
            'Beaker sessions are not configured: add a <product-config '
            'beaker> block with at least session.secret to zope.conf, or '
            'put Beaker\'s SessionMiddleware in the WSGI pipeline.')
    return _current


def is_configured():
    return _current is not None
