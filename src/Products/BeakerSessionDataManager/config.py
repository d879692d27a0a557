"""Read and check the Beaker session options once, at start-up.

The options come from ``<product-config beaker>`` in zope.conf, with or
without the ``session.`` or ``beaker.session.`` prefixes Beaker's own
middleware accepts.  They are coerced and checked here, so that a mistake
stops Zope at start-up with a message naming the option instead of failing
on some visitor's request later.
"""
import difflib
import logging
import os
import re
import threading
from hashlib import pbkdf2_hmac

from beaker.crypto import DEFAULT_NONCE_BITS
from beaker.crypto import get_crypto_module
from beaker.util import coerce_session_params

from .browserid import SessionCookie
from .cookiestore import SessionRecordCookie
from .interfaces import ConfigurationError
from .outages import describe
from .session import WRITE_GRANULARITY
from .store import BeakerStore
from .storeoptions import namespace_for


logger = logging.getLogger('Products.BeakerSessionDataManager')

PREFIXES = ('beaker.session.', 'session.')
# collective.beaker's cache options, which share <product-config beaker>.
CACHE_PREFIXES = ('beaker.cache.', 'cache.')
MIN_SECRET_LENGTH = 32
# Secrets copied from old documentation or examples.
PLACEHOLDER_SECRETS = frozenset([
    'secret', 'changeme', 'change-me', 'change_me', 'mysecret', 'somesecret',
    'your-secret', 'yoursecret', 'please-change-me', 'beaker',
])
SECRET_OPTIONS = ('secret', 'encrypt_key', 'validate_key')
URL_OPTIONS = ('url', 'urls')
# A URL's query parameters that hold a password: SQLAlchemy's and libpq's
# password, sslpassword, MySQL drivers' passwd, redis-py's ssl_password...
PASSWORD_PARAMETER = re.compile(
    r'([?&;][^=&;#?]*(?:password|passwd|pwd)[^=&;#?]*=)[^&#]*', re.I)
SAMESITE_VALUES = {'lax': 'Lax', 'strict': 'Strict', 'none': 'None'}
# Stores on the network, which start-up checks (warn_if_unreachable).
NETWORK_TYPES = ('ext:redis', 'ext:rediscluster', 'ext:memcached',
                 'ext:database', 'ext:sqla')
PROBE_SESSION_ID = '0' * 32
PROBE_TIMEOUT = 5
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
# The options each store takes besides SESSION_OPTIONS: those of its
# Beaker namespace manager (beaker.container, beaker.ext) that zope.conf can
# give (not digest_filenames, which the stores set, nor the ones that take
# Python objects: dbmmodule, sa_opts, bind, table), and ext:redis's
# client_cache_size, which only this product's Redis store takes.  'sa.'
# stands for every option of SQLAlchemy's engine; ext:rediscluster also
# takes redis-py's connection options (cluster_option_names).
STORE_OPTIONS = {
    'cookie': (),
    'memory': (),
    'file': ('lock_dir', 'file_dir'),
    'dbm': ('lock_dir', 'dbm_dir'),
    'ext:memcached': ('url', 'lock_dir', 'memcache_module'),
    'ext:redis': ('url', 'client_cache_size'),
    'ext:rediscluster': ('url', 'urls'),
    'ext:database': ('url', 'lock_dir', 'table_name', 'schema_name', 'sa.'),
    'ext:sqla': ('url', 'lock_dir', 'table_name', 'schema_name', 'sa.'),
}
# The directories a store keeps its records and locks in.
DIRECTORY_OPTIONS = ('data_dir', 'lock_dir', 'file_dir', 'dbm_dir')
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

# The options that decide how a cookie or a record is read: the same on
# every instance sharing a store (README: Several instances on one store).
SHARED_OPTIONS = ('type', 'key', 'secret', 'validate_key', 'encrypt_key',
                  'encrypt_nonce_bits', 'data_serializer', 'timeout')
DIGEST_ROUNDS = 100000

_current = None


class SessionConfiguration:
    """The checked options and the objects built from them.

    With ``existing_directories`` (beaker-sessions), the directories the
    settings name for a file or dbm store must exist: a mistyped path is
    an error, not a new, empty store.
    """

    def __init__(self, settings, source='zope.conf', var_dir=None,
                 existing_directories=False):
        self.source = source
        self.options = options = parse(settings)
        # The options the settings name; the others are defaults.
        self.given = frozenset(filter(None, map(option_name, settings)))
        self.type = options['type']
        if self.type not in STORE_OPTIONS:
            raise ConfigurationError(
                'session.type: unknown store %r; choose one of %s or cookie.'
                % (self.type, ', '.join(name for name in STORE_OPTIONS
                                        if name != 'cookie')))
        check_option_names(self.type, self.given)
        self.timeout = options['timeout'] or None
        self.write_granularity = options['write_granularity'] = \
            write_granularity(options['write_granularity'], self.timeout,
                              'write_granularity' in self.given)
        if self.type == 'cookie':
            # The client-side store: no session.secret, no server store.
            self.cookie = self._make_session_cookie()
            self.store = self.cookie.store
            return
        check_secret(options.get('secret'))
        if options.get('validate_key') and not options.get('encrypt_key'):
            # Beaker signs nothing with it: it is the second key of the
            # encryption of the records.
            raise ConfigurationError(
                'session.validate_key: does nothing without '
                'session.encrypt_key (with both, the records in the store '
                'are encrypted); set session.encrypt_key too, or remove '
                'it.')
        if options.get('data_serializer') not in ('pickle', 'json'):
            raise ConfigurationError(
                'session.data_serializer: must be "pickle" or "json", not %r.'
                % options.get('data_serializer'))
        self._default_directories(var_dir)
        self._make_directories(existing_directories)
        self.cookie = SessionCookie(
            secret=options['secret'], **self._cookie_params())
        self.store = self._make_store()

    def store_for(self, request):
        """The store of ``request``'s sessions: the cookie store is the
        cookie each request carries."""
        if self.type == 'cookie':
            return self.store.bind(request)
        return self.store

    def _cookie_params(self):
        options = self.options
        if options['samesite'] == 'None' and not options['secure']:
            raise ConfigurationError(
                'session.samesite: SameSite=None needs session.secure true: '
                'browsers drop a SameSite=None cookie that is not Secure, '
                'and sessions would never stick.')
        return dict(
            name=options['key'],
            path=options.get('path') or options['cookie_path'],
            domain=options.get('domain') or options['cookie_domain'],
            secure=options['secure'],
            httponly=options['httponly'],
            samesite=options['samesite'],
            expires=options['cookie_expires'],
        )

    def _make_session_cookie(self):
        """The cookie of ``session.type cookie``, which holds the session:
        signed, encrypted, JSON only."""
        options = self.options
        for name in ('validate_key', 'encrypt_key'):
            check_secret(options.get(name), name)
        if 'data_serializer' not in self.given:
            options['data_serializer'] = 'json'
        elif options['data_serializer'] != 'json':
            raise ConfigurationError(
                'session.data_serializer: the cookie store takes only '
                '"json": the browser sends the cookie back, and a pickle '
                'from it could run any code should the keys ever leak.')
        crypto_module = aes_module(options, 'the cookie store')
        return SessionRecordCookie(
            validate_key=options['validate_key'],
            encrypt_key=options['encrypt_key'],
            crypto_module=crypto_module,
            nonce_bits=nonce_bits(options),
            timeout=self.timeout,
            **self._cookie_params())

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

    def _make_directories(self, existing):
        """Make the store's directories now, as the store would: one that
        cannot be made stops Zope, naming its option."""
        for name in DIRECTORY_OPTIONS:
            path = self.options.get(name)
            if not path:
                continue
            if existing and name in self.given and \
                    self.type in ('file', 'dbm'):
                if not os.path.isdir(path):
                    raise ConfigurationError(
                        'session.%s: there is no directory %s; check the '
                        'path (Zope makes it when it starts).' % (name, path))
                continue
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    'session.%s: cannot make the directory %s (%s); give '
                    'one that the user Zope runs as can create or write.'
                    % (name, path, exc.strerror or exc))

    def _make_store(self):
        options = self.options
        store_options = {name: value for name, value in options.items()
                         if name not in SESSION_OPTIONS}
        # The Redis store's own, not its namespace manager's.
        cache_size = store_options.pop('client_cache_size', None)
        namespace_class, namespace_args = namespace_for(
            self.type, store_options)
        if options.get('encrypt_key'):
            # Beaker derives the records' key from both keys, and without
            # an AES module it would silently not encrypt at all.
            for name in ('encrypt_key', 'validate_key'):
                check_secret(options.get(name), name)
            aes_module(options, 'session.encrypt_key')
        store_class = BeakerStore
        extra = {}
        if options.get('encrypt_key'):
            # As Beaker's sessions take it: they read the records too.
            extra['encrypt_nonce_bits'] = nonce_bits(options)
        if self.type == 'ext:redis':
            # Beaker's records, read from a cache Redis keeps coherent.
            from .redisstore import RedisStore as store_class
            if cache_size is not None:
                extra['client_cache_size'] = cache_size
        elif self.type == 'ext:rediscluster':
            # The same records, with the compare-and-set and no lock.
            from .redisstore import RedisClusterStore as store_class
        elif self.type == 'ext:memcached':
            # Beaker's records, with memcached's compare-and-set.
            from .memcachedstore import MemcachedStore as store_class
        elif self.type in ('ext:database', 'ext:sqla'):
            # Beaker's rows, read in one round trip.
            from .sqlstore import SqlStore as store_class
        elif self.type == 'file' and os.name == 'posix':
            # Beaker's files, read without a lock: they are replaced whole.
            from .filestore import FileStore as store_class
        return store_class(
            namespace_class,
            namespace_args,
            **extra,
            data_dir=options.get('data_dir'),
            serializer=options['data_serializer'],
            timeout=self.timeout,
            encrypt_key=options.get('encrypt_key'),
            validate_key=options.get('validate_key'),
            crypto_type=options.get('crypto_type') or 'default',
            name=self.store_name(),
        )

    def store_name(self):
        """How messages name the store: its type, where it is and the
        option that says so."""
        for option in ('url', 'urls', 'data_dir'):
            where = self.options.get(option)
            if where:
                return '%s session store at %s (session.%s)' % (
                    self.type, mask_url(where), option)
        return '%s session store' % self.type

    def shared_digest(self):
        """A digest of SHARED_OPTIONS, which every instance sharing the
        store must have alike: compared between instances, it tells
        whether they do without showing the keys.  A slow hash, so that it
        cannot be used to guess them."""
        values = [(name, self.options.get(name)) for name in SHARED_OPTIONS]
        if self.type == 'ext:memcached':
            # python-memcached places a key by the server's position.
            values.append(('url', self.options.get('url')))
        values = repr(values)
        return pbkdf2_hmac('sha256', values.encode('utf-8'),
                           b'beaker-sessions shared settings',
                           DIGEST_ROUNDS).hex()[:12]

    def source_of(self, name):
        """Where option ``name`` (no prefix) came from: ``source`` or
        'default'."""
        return self.source if name in self.given else 'default'


def mask_option(name, value):
    """``value`` fit for display: secrets and URL credentials hidden."""
    if name in SECRET_OPTIONS and value:
        return '*' * 8
    if name in URL_OPTIONS:
        return mask_url(value)
    return value


def mask_url(url):
    """Hide the credentials in a store URL, or a list of them separated by
    commas or semicolons: the query parameters that hold a password, and
    whatever comes before an '@' (user and password), after the scheme if
    there is one.  Rather too much than too little: a password may hold
    any character, and each library reads URLs its own way."""
    if not isinstance(url, str):
        return url
    url = PASSWORD_PARAMETER.sub(r'\1***', url)
    masked, copied, previous = [], 0, 0
    for at in [match.start() for match in re.finditer('@', url)]:
        before = url[previous:at]
        if '://' in before:
            start = previous + before.rindex('://') + 3
        else:
            start = previous + max(before.rfind(','), before.rfind(';')) + 1
        masked.append(url[copied:start] + '***')
        copied, previous = at, at + 1
    masked.append(url[copied:])
    return ''.join(masked)


def parse(settings):
    """Strip the prefixes, apply the defaults, coerce every value."""
    options = dict(DEFAULTS)
    spelt = {}
    for setting, value in settings.items():
        name = option_name(setting)
        if name is None:
            continue
        if '.' in setting and not setting.startswith(PREFIXES) and \
                not setting.startswith('sa.'):
            raise ConfigurationError(
                '%s: neither a session option (session.NAME, or NAME '
                'alone) nor one of collective.beaker\'s cache options '
                '(cache.NAME); %s' % (setting, correction(
                    setting, ['session.' + name for name in known_names()])))
        if name in spelt:
            raise ConfigurationError(
                'session.%s: given twice, as %s and %s; keep one.'
                % (name, spelt[name], setting))
        spelt[name] = setting
        options[name] = value
    for name in list(options):
        options[name] = coerce_option(name, options[name])
    return options


def option_name(setting):
    """The option a setting names without its prefix, which it may lack
    (as on the command line of ``beaker-sessions``); None for a cache
    setting of collective.beaker."""
    if setting.startswith(CACHE_PREFIXES):
        return None
    for prefix in PREFIXES:
        if setting.startswith(prefix):
            return setting[len(prefix):]
    return setting


def check_option_names(store_type, names):
    """An option that no part of the configuration uses is a mistake: a
    typo, or an option of another store."""
    for name in sorted(names):
        if name in SESSION_OPTIONS or takes(store_type, name):
            continue
        users = [other for other in STORE_OPTIONS if takes(other, name)]
        if users:
            raise ConfigurationError(
                'session.%s: session.type %s does not use it, only %s; '
                'remove it.' % (name, store_type, ', '.join(users)))
        raise ConfigurationError('session.%s: unknown option; %s' % (
            name, correction(name, known_names(store_type))))


def takes(store_type, name):
    """Whether the store of ``store_type`` uses option ``name``."""
    options = STORE_OPTIONS[store_type]
    if name in options or 'sa.' in options and name.startswith('sa.'):
        return True
    return store_type == 'ext:rediscluster' and name in cluster_option_names()


def cluster_option_names():
    """The options redis-py's cluster client hands to its connections; the
    store passes it its other options, as Beaker does."""
    try:
        from redis.cluster import KWARGS_DISABLED_KEYS
        from redis.cluster import REDIS_ALLOWED_KEYS
    except ImportError:
        return frozenset()
    return frozenset(REDIS_ALLOWED_KEYS) - frozenset(KWARGS_DISABLED_KEYS)


def known_names(store_type=None):
    """The names of the options, for suggestions."""
    names = SESSION_OPTIONS.union(*STORE_OPTIONS.values()) - {'sa.'}
    if store_type == 'ext:rediscluster':
        names |= cluster_option_names()
    return sorted(names)


def correction(name, candidates):
    """What to do about a name that is not among ``candidates``."""
    close = difflib.get_close_matches(name, candidates, n=1)
    if close:
        return 'did you mean %s?' % (
            close[0] if '.' in name else 'session.' + close[0])
    return 'remove it, or correct its name.'


def coerce_option(name, value):
    """Coerce one option, naming it if the value is not acceptable."""
    if isinstance(value, str):
        value = value.strip()
    try:
        if name in ('write_granularity', 'timeout', 'client_cache_size'):
            value = int(value) if value not in (None, '') else 0
            if value < 0:
                raise ValueError('must not be negative')
            return value
        if name == 'samesite':
            if value in (None, '', False) or str(value).lower() == 'false':
                return None
            samesite = SAMESITE_VALUES.get(str(value).lower())
            if samesite is None:
                raise ConfigurationError(
                    'session.samesite: must be Lax, Strict or None, not %r.'
                    % value)
            return samesite
        return coerce_session_params({name: value})[name]
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(
            'session.%s: invalid value %r (%s)' % (name, value, exc))


def nonce_bits(options):
    """``session.encrypt_nonce_bits``, checked: Beaker cuts the nonce at
    whole bytes, and a store's records are readable only with the same."""
    bits = options.get('encrypt_nonce_bits') or DEFAULT_NONCE_BITS
    if bits % 8:
        raise ConfigurationError(
            'session.encrypt_nonce_bits: must be a multiple of 8, not %d.'
            % bits)
    return bits


def write_granularity(granularity, timeout, given):
    """The write granularity to use with ``timeout``.

    A request that only reads records the access once per granularity, so
    a session that is only read ends up to that much before ``timeout``
    after its last use: one at least as long as the timeout ends sessions
    in use, on every instance that reads them.  The default is at most
    half the timeout; a given one must be shorter than it.
    """
    if not timeout or granularity < timeout / 2:
        return granularity
    if given and granularity >= timeout:
        raise ConfigurationError(
            'session.write_granularity: %d is not less than session.timeout '
            '(%d): a session that is only read would expire while in use; '
            'make it less than the timeout, or remove it (the default is '
            '%d seconds, or half the timeout if that is shorter).'
            % (granularity, timeout, WRITE_GRANULARITY))
    return granularity if given else timeout // 2


def aes_module(options, user):
    """Beaker's crypto module of ``session.crypto_type``, if it has AES."""
    try:
        crypto_module = get_crypto_module(
            options.get('crypto_type') or 'default')
    except Exception as exc:
        raise ConfigurationError('session.crypto_type: %s' % exc)
    if not crypto_module.has_aes:
        raise ConfigurationError(
            'session.crypto_type: %s encrypts with AES; install '
            'cryptography or pycryptodome, e.g. pip install '
            '"Products.BeakerSessionDataManager[crypto]".' % user)
    return crypto_module


def check_secret(secret, option='secret'):
    """A signed session id is only as good as the secret signing it."""
    if not secret:
        raise ConfigurationError(
            'session.%s: required; set it to a random string of at '
            'least %d characters, the same for every Zope instance that '
            'shares the session store.' % (option, MIN_SECRET_LENGTH))
    if len(secret) < MIN_SECRET_LENGTH or \
            secret.lower() in PLACEHOLDER_SECRETS or len(set(secret)) < 8:
        raise ConfigurationError(
            'session.%s: too weak (%d characters); use a random string '
            'of at least %d characters, e.g. the output of: python3 -c '
            '"import secrets; print(secrets.token_urlsafe(36))"'
            % (option, len(secret), MIN_SECRET_LENGTH))


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
    configuration = configure(settings, source='zope.conf', var_dir=var_dir)
    warn_if_unreachable(configuration)
    return configuration


def warn_if_unreachable(configuration, timeout=PROBE_TIMEOUT):
    """Read a made-up session from a store on the network, once.

    A store that does not answer is worth a warning at start-up, not a
    Zope that does not start: pages without sessions keep working, and
    the others get 503 until the store answers.  Returns the problem, or
    None.
    """
    if configuration.type not in NETWORK_TYPES:
        return None
    outcome = []

    def probe():
        try:
            configuration.store.load(PROBE_SESSION_ID)
        except Exception as exc:
            outcome.append(describe(exc))
        else:
            outcome.append(None)

    thread = threading.Thread(target=probe, name='beaker-store-probe',
                              daemon=True)
    thread.start()
    thread.join(timeout)
    problem = outcome[0] if outcome else 'no answer within %s seconds' % (
        timeout)
    if problem:
        logger.warning(
            'The %s cannot be reached (%s). Zope starts anyway; requests '
            'that need a session get "503 Service Unavailable" until it '
            'answers. Check the store and the option.',
            configuration.store.name, problem)
    return problem


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


_good_middleware_secrets = set()


def check_middleware_secret(beaker_session):
    """Refuse the session of a Beaker middleware (``zope.ini``) whose secret
    would be refused in zope.conf: Beaker takes any, or none, and then
    accepts a session id the visitor chose."""
    params = beaker_session.__dict__.get('_params')
    if not isinstance(params, dict):
        return  # Not Beaker's SessionObject: its own concern.
    name = 'validate_key' if params.get('type') == 'cookie' else 'secret'
    secret = params.get(name)
    if secret in _good_middleware_secrets:
        return
    try:
        check_secret(secret, name)
    except ConfigurationError as exc:
        raise ConfigurationError(
            "Beaker's SessionMiddleware (zope.ini): beaker.%s" % exc) from None
    _good_middleware_secrets.add(secret)
