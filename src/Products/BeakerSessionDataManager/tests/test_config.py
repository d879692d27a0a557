"""Configuration: coercion once at start-up, errors that name the option."""
import os
import sys
import tempfile
import unittest
from unittest import mock

from Products.Sessions.interfaces import SessionDataManagerErr

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager import storeoptions
from Products.BeakerSessionDataManager import zmi
from Products.BeakerSessionDataManager.interfaces import ConfigurationError


SECRET = 'Qv3s9dJk2LmN8pRt5WxYz1AbCdEfGhIjKl'


def settings_shown(configuration):
    """The options as the ZMI's Settings tab shows them."""
    return {row['option']: row['value'] for row in zmi.settings_rows(
        configuration.options, configuration.source_of)}


class ParseTests(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        config.reset()

    def settings(self, **options):
        settings = {'session.secret': SECRET,
                    'session.data_dir': os.path.join(self.tmp, 'data')}
        settings.update(
            {'session.' + name: value for name, value in options.items()})
        return settings

    def test_strings_from_zope_conf_are_coerced(self):
        configuration = config.configure(self.settings(
            timeout='600', httponly='false', secure='true',
            cookie_expires='3600', samesite='strict'))
        self.assertEqual(configuration.timeout, 600)
        self.assertIs(configuration.cookie.httponly, False)
        self.assertIs(configuration.cookie.secure, True)
        self.assertEqual(configuration.cookie.samesite, 'Strict')
        self.assertEqual(configuration.cookie._params['max_age'], 3600)

    def test_beaker_session_prefix_is_accepted(self):
        configuration = config.configure({
            'beaker.session.secret': SECRET,
            'beaker.session.data_dir': self.tmp,
            'beaker.session.key': 'my_session',
        })
        self.assertEqual(configuration.cookie.name, 'my_session')

    def test_prefix_may_be_left_out(self):
        configuration = config.configure({
            'secret': SECRET, 'type': 'ext:redis',
            'url': 'redis://127.0.0.1:6379/1', 'timeout': '60',
            'beaker.session.key': 'my_session'})
        self.assertEqual(configuration.type, 'ext:redis')
        self.assertEqual(configuration.store.url, 'redis://127.0.0.1:6379/1')
        self.assertEqual(configuration.timeout, 60)
        self.assertEqual(configuration.cookie.name, 'my_session')
        self.assertEqual(configuration.source_of('url'), 'test')

    def test_collective_beakers_cache_options_are_left_alone(self):
        configuration = config.configure(self.settings(type='memory') | {
            'cache.type': 'ext:redis', 'cache.regions': 'short, long',
            'cache.short.expire': '3', 'beaker.cache.lock_dir': '/nowhere'})
        self.assertEqual(configuration.type, 'memory')
        self.assertNotIn('regions', configuration.options)
        self.assertNotIn('lock_dir', configuration.options)

    def test_settings_of_other_prefixes_are_refused(self):
        for setting in ('sesion.type', 'beaker.sesion.type', 'beaker.type'):
            with self.assertRaises(ConfigurationError) as caught:
                config.configure(self.settings() | {setting: 'memory'})
            self.assertTrue(str(caught.exception).startswith(
                setting + ': neither a session option'), caught.exception)
        self.assertTrue(str(caught.exception).endswith(
            '(cache.NAME); remove it, or correct its name.'))
        with self.assertRaises(ConfigurationError) as caught:
            config.configure(self.settings() | {'sesion.type': 'memory'})
        self.assertTrue(str(caught.exception).endswith(
            '; did you mean session.type?'))

    def test_an_option_is_given_once(self):
        with self.assertRaises(ConfigurationError) as caught:
            config.configure(self.settings(type='memory') | {'type': 'file'})
        self.assertEqual(
            str(caught.exception),
            'session.type: given twice, as session.type and type; keep one.')

    def test_safe_defaults(self):
        configuration = config.configure(self.settings())
        self.assertEqual(configuration.type, 'file')
        self.assertEqual(configuration.timeout, 1200)
        self.assertIs(configuration.cookie.httponly, True)
        self.assertEqual(configuration.cookie.samesite, 'Lax')
        self.assertEqual(configuration.cookie.name, 'beaker.session.id')

    def test_file_store_defaults_to_var_directory(self):
        configuration = config.configure(
            {'session.secret': SECRET}, var_dir=self.tmp)
        self.assertEqual(configuration.options['data_dir'],
                         os.path.join(self.tmp, 'sessions', 'data'))
        self.assertEqual(configuration.options['lock_dir'],
                         os.path.join(self.tmp, 'sessions', 'lock'))

    def assertRejected(self, option, settings):
        with self.assertRaises(ConfigurationError) as caught:
            config.configure(settings)
        self.assertIn(option, str(caught.exception))
        self.assertIsInstance(caught.exception, SessionDataManagerErr)
        self.assertIsInstance(caught.exception, ValueError)

    def test_invalid_values_name_the_option(self):
        self.assertRejected('session.timeout', self.settings(timeout='soon'))
        self.assertRejected('session.httponly',
                            self.settings(httponly='maybe'))
        self.assertRejected('session.samesite',
                            self.settings(samesite='sometimes'))
        self.assertRejected('session.type', self.settings(type='floppy'))
        self.assertRejected('session.data_serializer',
                            self.settings(data_serializer='yaml'))

    def assertMessage(self, message, settings):
        with self.assertRaises(ConfigurationError) as caught:
            config.configure(settings)
        self.assertEqual(str(caught.exception), message)

    def test_misspelt_options_are_refused(self):
        self.assertMessage(
            'session.tpye: unknown option; did you mean session.type?',
            self.settings(tpye='memory'))
        self.assertMessage(
            'session.timout: unknown option; did you mean session.timeout?',
            self.settings(timout='60'))
        self.assertMessage(
            'session.frobnicate: unknown option; remove it, or correct its '
            'name.', self.settings(frobnicate='1'))
        self.assertMessage(
            'session.pasword: unknown option; did you mean '
            'session.password?', self.settings(
                type='ext:rediscluster', url='redis://127.0.0.1:7000',
                pasword='x'))

    def test_options_of_other_stores_are_refused(self):
        self.assertMessage(
            'session.url: session.type file does not use it, only '
            'ext:memcached, ext:redis, ext:rediscluster, ext:database, '
            'ext:sqla; remove it.',
            self.settings(type='file', url='redis://127.0.0.1:6379/0'))
        self.assertMessage(
            'session.sa.pool_size: session.type ext:redis does not use it, '
            'only ext:database, ext:sqla; remove it.',
            self.settings(type='ext:redis', url='redis://127.0.0.1:6379/0',
                          **{'sa.pool_size': '5'}))
        self.assertMessage(
            'session.password: session.type ext:redis does not use it, '
            'only ext:rediscluster; remove it.',
            self.settings(type='ext:redis', url='redis://127.0.0.1:6379/0',
                          password='x'))
        self.assertMessage(
            'session.lock_dir: session.type cookie does not use it, only '
            'file, dbm, ext:memcached, ext:database, ext:sqla; remove it.',
            {'session.type': 'cookie', 'session.validate_key': SECRET,
             'session.encrypt_key': SECRET[::-1],
             'session.lock_dir': self.tmp})
        self.assertMessage(
            'session.client_cache_size: session.type cookie does not use '
            'it, only ext:redis; remove it.',
            {'session.type': 'cookie', 'session.validate_key': SECRET,
             'session.encrypt_key': SECRET[::-1],
             'session.client_cache_size': '10'})

    def test_options_of_each_store_are_accepted(self):
        lock_dir = os.path.join(self.tmp, 'lock')
        sqlite = 'sqlite:///%s' % os.path.join(self.tmp, 'sessions.db')
        for options in (
                dict(type='file', lock_dir=lock_dir,
                     file_dir=os.path.join(self.tmp, 'files')),
                dict(type='dbm', lock_dir=lock_dir,
                     dbm_dir=os.path.join(self.tmp, 'dbm')),
                dict(type='ext:memcached', url='127.0.0.1:11211',
                     memcache_module='memcache', lock_dir=lock_dir),
                dict(type='ext:redis', url='redis://127.0.0.1:6379/0',
                     client_cache_size='5'),
                dict(type='ext:rediscluster', urls='redis://127.0.0.1:7000',
                     username='zope', password='pw', client_name='zope'),
                dict(type='ext:database', url=sqlite, table_name='t',
                     schema_name='main', lock_dir=lock_dir,
                     **{'sa.pool_size': '2', 'sa.echo': 'false'}),
                dict(type='ext:sqla', url=sqlite, table_name='t',
                     **{'sa.pool_recycle': '60'})):
            configuration = config.configure(self.settings(**options))
            self.assertEqual(configuration.given, frozenset(
                options) | {'secret', 'data_dir'})

    def test_without_redis_py_the_cluster_takes_only_its_urls(self):
        with mock.patch.dict(sys.modules, {'redis.cluster': None}):
            self.assertMessage(
                'session.password: unknown option; remove it, or correct '
                'its name.', self.settings(
                    type='ext:rediscluster', url='redis://127.0.0.1:7000',
                    password='x'))

    def test_encrypted_records_take_the_nonce_size(self):
        # Beaker's own sessions on the same store read what we write, and
        # the other way round, with the same encrypt_nonce_bits.
        from beaker.session import Session
        keys = dict(encrypt_key=SECRET[::-1], validate_key=SECRET)
        store = config.configure(self.settings(
            encrypt_nonce_bits='64', **keys)).store
        store.merge('c' * 32, lambda record: {'card': '4111'})
        data_dir = os.path.join(self.tmp, 'data')
        session = Session(
            {}, id='c' * 32, use_cookies=False, type='file',
            data_dir=data_dir, lock_dir=os.path.join(data_dir, 'lock'),
            encrypt_nonce_bits=64, **keys)
        self.assertEqual(session['card'], '4111')
        session['theirs'] = 2
        session.save()
        self.assertEqual(store.load('c' * 32)['theirs'], 2)
        self.assertMessage(
            'session.encrypt_nonce_bits: must be a multiple of 8, not 12.',
            self.settings(encrypt_nonce_bits='12', **keys))

    def test_validate_key_needs_encrypt_key(self):
        self.assertMessage(
            'session.validate_key: does nothing without session.encrypt_key '
            '(with both, the records in the store are encrypted); set '
            'session.encrypt_key too, or remove it.',
            self.settings(validate_key=SECRET[::-1]))

    def test_memcached_servers_are_checked(self):
        for url in ('memcached://127.0.0.1:11211',
                    '127.0.0.1:11211,127.0.0.1:11212', 'cache1,cache2',
                    '127.0.0.1:11211; 127.0.0.1:11212', '127.0.0.1:11211;'):
            self.assertMessage(
                'session.url: the ext:memcached store takes '
                'HOST:PORT[;HOST:PORT...]: servers separated by semicolons, '
                'with no scheme (memcached://) and no spaces.',
                self.settings(type='ext:memcached', url=url))
        for url in ('127.0.0.1:11211;127.0.0.1:11212', 'cache1',
                    'unix:/run/memcached.sock'):
            config.configure(self.settings(type='ext:memcached', url=url))

    def test_redis_ssl_cert_reqs_is_checked(self):
        for store_type in ('ext:redis', 'ext:rediscluster'):
            self.assertMessage(
                "session.url: the parameter ssl_cert_reqs is none, optional "
                "or required, not 'bogus'.", self.settings(
                    type=store_type,
                    url='rediss://127.0.0.1:6379?ssl_cert_reqs=bogus'))
            config.configure(self.settings(
                type=store_type,
                url='rediss://127.0.0.1:6379?ssl_cert_reqs=optional'))

    def test_directories_that_cannot_be_made(self):
        regular_file = os.path.join(self.tmp, 'file')
        open(regular_file, 'w').close()
        under_file = os.path.join(regular_file, 'sessions')
        for option, settings, reason in (
                ('data_dir', self.settings(data_dir='/proc/nope'),
                 'No such file or directory'),
                ('data_dir', self.settings(data_dir=under_file),
                 'Not a directory'),
                ('data_dir', self.settings(data_dir=regular_file),
                 'File exists'),
                ('lock_dir', self.settings(lock_dir=under_file),
                 'Not a directory'),
                ('file_dir', self.settings(file_dir=under_file),
                 'Not a directory'),
                ('dbm_dir', self.settings(type='dbm', dbm_dir=under_file),
                 'Not a directory'),
                ('data_dir', self.settings(
                    type='ext:memcached', url='127.0.0.1:11211',
                    data_dir=under_file), 'Not a directory')):
            self.assertMessage(
                'session.%s: cannot make the directory %s (%s); give one '
                'that the user Zope runs as can create or write.'
                % (option, settings['session.' + option], reason), settings)

    def test_directories_are_made_at_start_up(self):
        settings = self.settings(file_dir=os.path.join(self.tmp, 'files'))
        config.configure(settings)
        for option in ('data_dir', 'file_dir'):
            self.assertTrue(os.path.isdir(settings['session.' + option]))

    def test_sa_url_is_not_the_url(self):
        url = 'sqlite:///%s' % os.path.join(self.tmp, 'sessions.db')
        self.assertMessage(
            'session.sa.url: the database is session.url; remove it.',
            self.settings(type='ext:sqla', url=url, **{'sa.url': url}))

    def test_existing_directories(self):
        missing = os.path.join(self.tmp, 'missing')
        with self.assertRaises(ConfigurationError) as caught:
            config.SessionConfiguration(
                self.settings(data_dir=missing), existing_directories=True)
        self.assertTrue(str(caught.exception).startswith(
            'session.data_dir: there is no directory %s;' % missing))
        self.assertFalse(os.path.exists(missing))
        # A store on the network makes its directories, as in Zope.
        config.SessionConfiguration(self.settings(
            type='ext:memcached', url='127.0.0.1:11211', data_dir=missing),
            existing_directories=True)
        self.assertTrue(os.path.isdir(missing))

    def test_sql_engine_options_are_checked_at_start_up(self):
        url = 'sqlite:///%s' % os.path.join(self.tmp, 'sessions.db')
        for option, value, error in (
                ('sa.pool_size', 'lots', "ValueError: invalid literal for "
                                         "int() with base 10: 'lots'"),
                ('sa.frobnicate', '1', "TypeError: Invalid argument(s) "
                                       "'frobnicate' sent to "
                                       "create_engine()")):
            with self.assertRaises(ConfigurationError) as caught:
                config.configure(self.settings(
                    type='ext:database', url=url, **{option: value}))
            message = str(caught.exception)
            self.assertTrue(message.startswith(
                'session.%s: SQLAlchemy refuses it (%s' % (option, error)),
                message)
            self.assertTrue(message.endswith(
                '; see the arguments of create_engine() in its '
                'documentation.'))

    def test_libpq_timeouts_unless_the_url_gives_them(self):
        # See test_outage: a server that never answers.
        url = 'postgresql+psycopg2://zope@127.0.0.1/sessions'
        for query, connect_timeout in (('', 5), ('?connect_timeout=20', None)):
            store = config.configure(self.settings(
                type='ext:database', url=url + query)).store
            connect_args = store.namespace_args['sa_opts']['sa.connect_args']
            self.assertEqual(connect_args.get('connect_timeout'),
                             connect_timeout)
            self.assertEqual(connect_args['keepalives_idle'], 30)
            self.assertEqual(connect_args['tcp_user_timeout'], 30000)

    def test_no_user_timeout_for_a_libpq_before_12(self):
        # It would refuse the option, and every connection with it.
        url = 'postgresql+psycopg2://zope@127.0.0.1/sessions'
        self.assertGreaterEqual(storeoptions.libpq_version('psycopg2'), 120000)
        with mock.patch.object(storeoptions, 'libpq_version',
                               return_value=110005):
            store = config.configure(self.settings(
                type='ext:database', url=url)).store
        connect_args = store.namespace_args['sa_opts']['sa.connect_args']
        self.assertNotIn('tcp_user_timeout', connect_args)
        self.assertEqual(connect_args['connect_timeout'], 5)

    def test_sqlite_needs_an_absolute_path(self):
        for url in ('sqlite:///sessions.db',
                    'sqlite:///file:sessions.db?uri=true'):
            with self.assertRaises(ConfigurationError) as caught:
                config.configure(self.settings(type='ext:database', url=url))
            self.assertEqual(
                str(caught.exception),
                'session.url: the SQLite database %s is a relative path, '
                'which depends on the directory Zope starts in; give an '
                'absolute one: sqlite:////ABSOLUTE/PATH/sessions.db'
                % url[len('sqlite:///'):].partition('?')[0])
        path = os.path.join(self.tmp, 'sessions.db')
        for url in ('sqlite:///' + path, 'sqlite:///file:%s?uri=true' % path):
            config.configure(self.settings(type='ext:database', url=url))

    def test_samesite_none_needs_secure(self):
        cookie_store = {'session.type': 'cookie',
                        'session.validate_key': SECRET,
                        'session.encrypt_key': SECRET[::-1]}
        for settings in (self.settings(), cookie_store):
            self.assertMessage(
                'session.samesite: SameSite=None needs session.secure true: '
                'browsers drop a SameSite=None cookie that is not Secure, '
                'and sessions would never stick.',
                settings | {'session.samesite': 'None'})
            configuration = config.configure(settings | {
                'session.samesite': 'none', 'session.secure': 'true'})
            self.assertEqual(configuration.cookie.samesite, 'None')

    def test_secret_is_required_and_must_be_strong(self):
        settings = self.settings()
        del settings['session.secret']
        self.assertRejected('session.secret', settings)
        self.assertRejected('session.secret', self.settings(secret='secret'))
        self.assertRejected('session.secret', self.settings(secret='s3cr3t'))
        self.assertRejected('session.secret', self.settings(secret='x' * 40))

    def test_write_granularity_is_shorter_than_the_timeout(self):
        # A session only read records its access once per granularity: one
        # as long as the timeout would end sessions in use.
        granularity = {
            timeout: config.configure(self.settings(
                timeout=timeout)).write_granularity
            for timeout in ('0', '1', '3', '60', '61', '1200')}
        self.assertEqual(granularity,
                         {'0': 30, '1': 0, '3': 1, '60': 30, '61': 30,
                          '1200': 30})
        configuration = config.configure(self.settings(
            timeout='3', write_granularity='2'))
        self.assertEqual(configuration.write_granularity, 2)
        for value in ('3', '30'):
            with self.assertRaises(ConfigurationError) as caught:
                config.configure(self.settings(
                    timeout='3', write_granularity=value))
            self.assertTrue(str(caught.exception).startswith(
                'session.write_granularity: %s is not less than '
                'session.timeout (3)' % value), caught.exception)

    def test_shared_digest_tells_instances_that_read_sessions_alike(self):
        def digest(**options):
            return config.configure(self.settings(**options)).shared_digest()

        first = digest()
        self.assertRegex(first, r'\A[0-9a-f]{12}\Z')
        self.assertNotIn(first, repr(config.get_configuration().options))
        # Defaults given or not, and options that may differ.
        self.assertEqual(digest(timeout='1200', data_serializer='pickle'),
                         first)
        self.assertEqual(digest(write_granularity='10',
                                data_dir=self.tmp + '/other'), first)
        others = [digest(secret=SECRET + 'x'), digest(timeout='600'),
                  digest(data_serializer='json'), digest(key='other'),
                  digest(encrypt_key=SECRET, validate_key=SECRET + 'y')]
        self.assertEqual(len(set(others + [first])), 6, others)
        # A memcached pool in another order: another place for each key.
        pool = ['127.0.0.1:11211', '127.0.0.1:11212']
        memcached = [digest(type='ext:memcached', data_dir=None,
                            url=';'.join(servers))
                     for servers in (pool, pool[::-1])]
        self.assertNotEqual(*memcached)

    def test_data_dir_required_without_var_directory(self):
        self.assertRejected('session.data_dir', {'session.secret': SECRET})

    def test_unconfigured_use_is_a_clear_error(self):
        config.reset()
        with self.assertRaises(ConfigurationError) as caught:
            config.get_configuration()
        self.assertIn('<product-config beaker>', str(caught.exception))

    def test_the_settings_tab_masks_secrets(self):
        configuration = config.configure(self.settings(
            type='ext:redis', url='redis://user:pw@127.0.0.1:6379/0'))
        shown = settings_shown(configuration)
        self.assertEqual(shown['session.secret'], '********')
        self.assertNotIn('pw', shown['session.url'])
        self.assertNotIn(SECRET, repr(shown))

    def test_every_credential_in_a_url_is_masked(self):
        for url, shown in (
                ('postgresql+psycopg2://postgres@127.0.0.1:5432/test'
                 '?password=hunter2',
                 'postgresql+psycopg2://***@127.0.0.1:5432/test'
                 '?password=***'),
                ('postgresql+psycopg2://127.0.0.1/test?connect_timeout=5'
                 '&PassWord=hunter2&sslpassword=hunter2#x',
                 'postgresql+psycopg2://127.0.0.1/test?connect_timeout=5'
                 '&PassWord=***&sslpassword=***#x'),
                ('mysql+pymysql://127.0.0.1/zope?passwd=hunter2',
                 'mysql+pymysql://127.0.0.1/zope?passwd=***'),
                ('rediss://127.0.0.1?ssl_password=hunter2&ssl_ca_certs=/ca',
                 'rediss://127.0.0.1?ssl_password=***&ssl_ca_certs=/ca'),
                ('user:hunter2@127.0.0.1:11211', '***@127.0.0.1:11211'),
                ('a:hunter2@10.0.0.1:11211;b:hunter2@10.0.0.2:11211',
                 '***@10.0.0.1:11211;***@10.0.0.2:11211'),
                ('redis://:hunter2@10.0.0.1:7000,redis://u:hunter2@10.0.0.2:'
                 '7000,redis://10.0.0.3:7000',
                 'redis://***@10.0.0.1:7000,redis://***@10.0.0.2:7000,'
                 'redis://10.0.0.3:7000'),
                ('postgresql://zope:hun,ter;2@db/zope',
                 'postgresql://***@db/zope'),
                ('postgresql://zope:hun@ter2@db/zope',
                 'postgresql://***@***@db/zope'),
                ('redis://127.0.0.1:6379/0', 'redis://127.0.0.1:6379/0')):
            for name in ('url', 'urls'):
                self.assertEqual(config.mask_option(name, url), shown)

    def test_the_settings_and_the_store_name_show_no_password(self):
        url = 'postgresql+psycopg2://zope:hunter2@127.0.0.1/test?password=x'
        configuration = config.configure(self.settings(
            type='ext:database', url=url))
        self.assertNotIn('hunter2', configuration.store.name)
        self.assertNotIn('password=x', configuration.store.name)
        urls = 'redis://:hunter2@127.0.0.1:7000,redis://:hunter2@[::1]:7001'
        configuration = config.configure(self.settings(
            type='ext:rediscluster', urls=urls))
        self.assertNotIn('hunter2', repr(settings_shown(configuration)))
        self.assertNotIn('hunter2', configuration.store.name)


class ZopeConfTests(unittest.TestCase):
    """The product reads <product-config beaker> when Zope starts."""

    def tearDown(self):
        config.reset()

    def with_product_config(self, settings):
        from App.config import getConfiguration
        zope_config = getConfiguration()
        saved = getattr(zope_config, 'product_config', None)
        zope_config.product_config = {'beaker': settings}
        self.addCleanup(setattr, zope_config, 'product_config', saved)

    def test_no_block_means_not_configured(self):
        self.with_product_config(None)
        self.assertIsNone(config.configure_from_zope_conf())
        self.assertFalse(config.is_configured())

    def test_block_is_read(self):
        tmp = tempfile.mkdtemp()
        self.with_product_config({'session.secret': SECRET,
                                  'session.data_dir': tmp,
                                  'session.timeout': '60'})
        configuration = config.configure_from_zope_conf()
        self.assertEqual(configuration.timeout, 60)
        self.assertEqual(configuration.source, 'zope.conf')

    def test_invalid_block_stops_start_up(self):
        from Products.BeakerSessionDataManager import initialize
        self.with_product_config({'session.secret': 'short'})

        class Context:
            def registerClass(self, *args, **kw):
                pass

        with self.assertRaises(ConfigurationError) as caught:
            initialize(Context())
        self.assertIn('session.secret', str(caught.exception))

    def test_warns_about_collective_beaker(self):
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version

        from Products.BeakerSessionDataManager import \
            warn_about_collective_beaker
        try:
            version('collective.beaker')
        except PackageNotFoundError:
            with self.assertNoLogs('Products.BeakerSessionDataManager'):
                warn_about_collective_beaker()
        else:
            with self.assertLogs('Products.BeakerSessionDataManager',
                                 'WARNING') as logged:
                warn_about_collective_beaker()
            self.assertIn('Remove it', logged.output[0])
