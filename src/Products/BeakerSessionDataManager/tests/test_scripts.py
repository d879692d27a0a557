"""The ``beaker-sessions`` console script on a real zope.conf: run as
installed (the entry point script in a subprocess), and, where only its
answers matter, called in this process, which starts faster."""
import os
import pty
import select
import subprocess
import sys
import textwrap
import time

import pytest

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager.cleanup import layout_for
from Products.BeakerSessionDataManager.cleanup import lock_name
from Products.BeakerSessionDataManager.scripts import Progress
from Products.BeakerSessionDataManager.scripts import main
from Products.BeakerSessionDataManager.scripts import read_zope_conf
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests.test_cleanup import SECRET
from Products.BeakerSessionDataManager.tests.test_cleanup import backdate
from Products.BeakerSessionDataManager.tests.test_cleanup import expired
from Products.BeakerSessionDataManager.tests.test_cleanup import lock_path
from Products.BeakerSessionDataManager.tests.test_cleanup import new_ids
from Products.BeakerSessionDataManager.tests.test_cleanup import old_file
from Products.BeakerSessionDataManager.tests.test_cleanup import stored
from Products.BeakerSessionDataManager.tests.test_cleanup import write


SCRIPT = os.path.join(os.path.dirname(sys.executable), 'beaker-sessions')
UNREACHABLE_SQL = 'postgresql+psycopg2://nobody@127.0.0.1:1/none'


def run(*arguments):
    return subprocess.run([SCRIPT] + list(arguments), capture_output=True,
                          text=True, timeout=120)


class Result:
    """What ``call`` returns: ``subprocess.run``'s attributes."""

    def __init__(self, returncode, captured):
        self.returncode = returncode
        self.stdout = captured.out
        self.stderr = captured.err


@pytest.fixture
def call(capsys):
    """Run the script's ``main`` in this process."""
    def call(*arguments):
        try:
            returncode = main(list(arguments))
        except SystemExit as exit:  # argparse
            returncode = exit.code
        return Result(returncode, capsys.readouterr())
    return call


def zope_conf(instance, **options):
    """Write an instance's etc/zope.conf, as mkwsgiinstance makes it,
    with ``options`` in <product-config beaker>; return its path."""
    for directory in ('etc', 'var'):
        os.makedirs(instance / directory, exist_ok=True)
    lines = '\n'.join('    session.%s %s' % item for item in options.items())
    path = instance / 'etc' / 'zope.conf'
    path.write_text(textwrap.dedent('''\
        %%define INSTANCE %s
        instancehome $INSTANCE

        <zodb_db main>
            <filestorage>
              path $INSTANCE/var/Data.fs
            </filestorage>
            mount-point /
        </zodb_db>

        <product-config beaker>
        %s
        </product-config>
        ''') % (instance, lines))
    return str(path)


@pytest.fixture
def instance(tmp_path):
    return tmp_path / 'instance'


def configuration_of(path):
    """The configuration Zope makes of the zope.conf at ``path``."""
    settings, var_dir = read_zope_conf(path)
    return config.SessionConfiguration(settings, var_dir=var_dir)


def test_help(call):
    result = run('--help')
    assert result.returncode == 0
    assert 'cleanup' in result.stdout and 'check' in result.stdout
    result = call('cleanup', '--help')
    assert result.returncode == 0
    for option in ('--dry-run', '--verbose', '--progress',
                   '--remove-unreadable', '--grace', '-C ZOPE_CONF',
                   '-o NAME=VALUE', 'cron'):
        assert option in result.stdout
    assert call('check', '--help').returncode == 0


def test_command_line_mistakes(call):
    assert call().returncode == 2
    assert call('sweep').returncode == 2
    result = call('check')
    assert result.returncode == 2
    assert 'name a zope.conf with -C' in result.stderr
    result = call('cleanup', '-o', 'type')
    assert result.returncode == 2
    assert '-o type: expected NAME=VALUE' in result.stderr
    assert call('cleanup', '--grace', 'soon').returncode == 2


def test_check(call, instance):
    path = zope_conf(instance, type='file', secret=SECRET)
    result = run('check', '-C', path)
    assert result.returncode == 0, result.stderr
    # var_dir as at start-up: the instance's var directory.
    data_dir = instance / 'var' / 'sessions' / 'data'
    assert 'OK: file session store at %s (session.data_dir), round trip ' \
        % data_dir in result.stdout
    assert ', 0 stored sessions' in result.stdout
    assert 'never been cleaned up' in result.stdout
    digest = config.SessionConfiguration({
        'session.secret': SECRET, 'session.data_dir': str(data_dir),
    }).shared_digest()
    assert 'Shared settings digest %s: the same on every Zope instance' \
        % digest in result.stdout
    assert not os.path.exists(instance / 'var' / 'Data.fs')

    assert call('cleanup', '-C', path).returncode == 0
    assert 'last cleaned up' in call('check', '-C', path).stdout


def test_check_sql(call, tmp_path, instance):
    path = zope_conf(instance, type='ext:database', secret=SECRET,
                     url='sqlite:///%s' % (tmp_path / 'sessions.db'))
    result = call('check', '-C', path)
    assert result.returncode == 0, result.stderr
    assert 'OK: ext:database session store at sqlite:///' in result.stdout


def checked(call, store_type, url, sessions):
    """The output of ``beaker-sessions check`` of a store, after writing
    ``sessions`` new sessions to it."""
    configuration = config.SessionConfiguration({
        'session.type': store_type, 'session.url': url,
        'session.secret': SECRET})
    write(configuration, new_ids(sessions), time.time())
    result = call('check', '-o', 'type=' + store_type, '-o', 'url=' + url,
                  '-o', 'secret=' + SECRET)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_check_network_stores(call):
    with servers.RedisServer() as redis_server:
        output = checked(call, 'ext:redis', redis_server.url, 3)
    # Counted with SCAN; the probe left nothing behind.
    assert 'OK: ext:redis session store at %s (session.url), round trip' \
        % redis_server.url in output
    assert ', 3 stored sessions' in output
    # The primaries of a cluster share the keys.
    with servers.RedisCluster() as cluster:
        output = checked(call, 'ext:rediscluster', cluster.urls, 12)
    assert 'OK: ext:rediscluster session store' in output
    assert ', 12 stored sessions' in output
    output = checked(call, 'ext:memcached',
                     servers.memcached_url(servers.shared_memcached()), 1)
    assert 'OK: ext:memcached session store' in output
    assert 'stored sessions' not in output  # memcached cannot count


def test_check_cookie(call, instance):
    result = call('check', '-C', zope_conf(
        instance, type='cookie', validate_key=SECRET,
        encrypt_key=SECRET[::-1]))
    assert result.returncode == 0, result.stderr
    assert "OK: the sessions live in the browsers' cookies" in result.stdout


def test_check_invalid_configuration(call, instance):
    result = call('check', '-C', zope_conf(instance, type='file'))
    assert result.returncode == 2
    assert 'FAILED: invalid configuration: session.secret: required' \
        in result.stderr
    result = call('check', '-C', zope_conf(
        instance, type='file', secret=SECRET, timeout='soon'))
    assert result.returncode == 2
    assert "session.timeout: invalid value 'soon'" in result.stderr


def test_check_unreachable_store(instance):
    result = run('check', '-C', zope_conf(
        instance, type='ext:database', secret=SECRET, url=UNREACHABLE_SQL))
    assert result.returncode == 1
    assert result.stderr.startswith(
        'beaker-sessions: FAILED: ext:database session store at '
        'postgresql+psycopg2://***@127.0.0.1:1/none (session.url): '
        'OperationalError')


def test_bad_zope_conf(call, tmp_path, instance):
    result = call('check', '-C', str(tmp_path / 'missing.conf'))
    assert result.returncode == 2
    assert 'missing.conf: no such file' in result.stderr
    path = zope_conf(instance, type='file', secret=SECRET)
    with open(path, 'a') as f:
        f.write('<no-such-section>\n')
    result = call('cleanup', '-C', path)
    assert result.returncode == 2
    assert 'no-such-section' in result.stderr
    path = tmp_path / 'plain.conf'
    path.write_text('instancehome %s\n' % tmp_path)
    result = call('cleanup', '-C', str(path))
    assert result.returncode == 2
    assert 'no <product-config beaker> section' in result.stderr


def test_cleanup(call, instance):
    path = zope_conf(instance, type='file', secret=SECRET, timeout=600)
    configuration = configuration_of(path)
    old = expired(configuration, 3)
    live = new_ids(2)
    write(configuration, live, time.time())

    result = call('cleanup', '-C', path, '--dry-run', '-v')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == [
        '%s (expired)' % session_id for session_id in old]
    assert 'Would remove 3 expired sessions from the file session store' \
        in result.stdout
    assert stored(configuration) == set(old + live)

    result = run('cleanup', '-C', path, '-v')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == [
        '%s (expired)' % session_id for session_id in old]
    assert 'Removed 3 expired sessions' in result.stdout
    assert stored(configuration) == set(live)

    result = call('cleanup', '-C', path)
    assert result.returncode == 0
    assert result.stdout.startswith('Removed nothing from the file session')


def test_cleanup_with_options(tmp_path):
    data_dir = tmp_path / 'sessions'
    configuration = config.SessionConfiguration({
        'session.type': 'dbm', 'session.secret': SECRET,
        'session.data_dir': str(data_dir), 'session.timeout': '60'})
    old = expired(configuration, 4)
    # No secret needed: the cleanup signs no cookies.
    result = run('cleanup', '-o', 'session.type=dbm',
                 '-o', 'data_dir=%s' % data_dir, '-o', 'timeout=60',
                 '--progress')
    assert result.returncode == 0, result.stderr
    assert 'Removed 4 expired sessions from the dbm session store' \
        in result.stdout
    assert '4 of 4 sessions examined (100%)' in result.stderr
    assert not stored(configuration) & set(old)


def test_cleanup_options_override_zope_conf(call, instance):
    path = zope_conf(instance, type='file', secret=SECRET)
    expired(configuration_of(path), 2)
    result = call('cleanup', '-C', path, '-o', 'session.timeout=0')
    assert result.returncode == 0
    assert result.stdout == ('Nothing removed: session.timeout is 0, so '
                             'sessions never expire.\n')
    assert len(stored(configuration_of(path))) == 2


def test_zope_conf_without_prefixes(call, instance):
    path = zope_conf(instance, type='file', secret=SECRET, timeout=600)
    with open(path) as f:
        text = f.read()
    with open(path, 'w') as f:
        f.write(text.replace('    session.', '    '))
    expired(configuration_of(path), 2)
    assert 'timeout' in read_zope_conf(path)[0]
    result = call('cleanup', '-C', path, '-o', 'session.timeout=0')
    assert result.returncode == 0, result.stderr
    assert 'session.timeout is 0' in result.stdout
    result = call('cleanup', '-C', path, '-o', 'secret=', '-n')
    assert result.returncode == 0, result.stderr
    assert 'Would remove 2 expired sessions' in result.stdout


@pytest.mark.parametrize('options, says', [
    (['-o', 'type=ext:redis', '-o', 'url=redis://127.0.0.1:1/0'],
     'Nothing to clean up: the ext:redis session store at '
     'redis://127.0.0.1:1/0 (session.url) gives every record a time to '
     'live'),
    (['-o', 'type=ext:memcached', '-o', 'url=127.0.0.1:1'],
     'Nothing to clean up: the ext:memcached session store'),
    (['-o', 'type=memory'],
     'Nothing to clean up: the memory store lives inside each Zope '
     'process'),
    (['-o', 'type=cookie', '-o', 'validate_key=' + SECRET,
      '-o', 'encrypt_key=' + SECRET[::-1]],
     'Nothing to clean up: with session.type cookie the sessions live in '
     'the browsers\' cookies.'),
])
def test_cleanup_not_needed(call, options, says):
    result = call('cleanup', *options)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(says)


def test_cleanup_unreachable_store(call):
    result = call('cleanup', '-o', 'type=ext:database',
                  '-o', 'url=' + UNREACHABLE_SQL)
    assert result.returncode == 1
    assert 'FAILED: cannot clean up the ext:database session store' \
        in result.stderr
    assert 'OperationalError' in result.stderr


def test_cleanup_reports_what_it_kept(call, tmp_path):
    """Every kind of record kept is named, and a session that could not be
    cleaned makes the run fail."""
    data_dir = tmp_path / 'data'
    options = ['-o', 'type=file', '-o', 'data_dir=%s' % data_dir,
               '-o', 'timeout=60']
    configuration = config.SessionConfiguration({
        'session.type': 'file', 'session.data_dir': str(data_dir),
        'session.timeout': '60', 'session.secret': SECRET})
    old = expired(configuration, 2)
    layout = layout_for(configuration)
    broken = new_ids(1)
    write(configuration, broken, 0)
    backdate(configuration, broken)
    lock = lock_path(layout, lock_name(broken[0]))
    if os.path.exists(lock):
        os.remove(lock)
    os.makedirs(lock)
    old_file(lock_path(layout, 'a' * 40))

    # Read as JSON, the pickled sessions are unreadable, and kept.
    result = call('cleanup', *options, '-o', 'data_serializer=json',
                  '--grace', '30', '--progress')
    assert result.returncode == 1
    assert result.stdout.startswith('Removed nothing from the file session')
    assert result.stdout.splitlines()[1:] == [
        'Kept 2 unreadable records.',
        'Unreadable records are kept: check session.encrypt_key, '
        'session.validate_key and session.data_serializer, or remove them '
        'with --remove-unreadable.',
        'Removed 1 stale lock or temporary files.']
    assert '0 of 3 sessions examined (0%)\n' in result.stderr
    assert '3 of 3 sessions examined (100%)\n' in result.stderr
    assert ('beaker-sessions: FAILED: 1 sessions could not be cleaned up; '
            'the first: %s: IsADirectoryError' % broken[0]) in result.stderr

    result = call('cleanup', *options, '-n')
    assert result.returncode == 1
    assert result.stdout.startswith(
        'Would remove 2 expired sessions from the file session store')
    assert stored(configuration) == set(old + broken)


@pytest.mark.parametrize('store_type', ['file', 'dbm'])
def test_directories_named_must_exist(call, tmp_path, store_type):
    """A mistyped directory in a cron line is an error, not an empty
    store made there."""
    missing = tmp_path / 'nonexistent' / 'sessions'
    os.makedirs(tmp_path / 'data')
    for option, directories in (
            ('data_dir', ['data_dir=%s' % missing]),
            ('lock_dir', ['data_dir=%s' % (tmp_path / 'data'),
                          'lock_dir=%s' % missing]),
            ('%s_dir' % store_type, ['data_dir=%s' % (tmp_path / 'data'),
                                     '%s_dir=%s' % (store_type, missing)])):
        arguments = ['-o', 'type=' + store_type, '-o', 'secret=' + SECRET]
        for setting in directories:
            arguments += ['-o', setting]
        for command in ('cleanup', 'check'):
            result = call(command, *arguments)
            assert result.returncode == 2
            assert result.stderr == (
                'beaker-sessions: FAILED: invalid configuration: session.%s: '
                'there is no directory %s; check the path (Zope makes it '
                'when it starts).\n' % (option, missing))
    assert not os.path.exists(tmp_path / 'nonexistent')
    assert os.listdir(tmp_path / 'data') == []


def test_the_instances_own_directories_are_made(call, instance):
    """Zope makes them at start-up; a new instance has none yet."""
    path = zope_conf(instance, type='dbm', secret=SECRET)
    result = call('cleanup', '-C', path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('Removed nothing from the dbm session')
    assert os.path.isdir(instance / 'var' / 'sessions' / 'lock')


@pytest.mark.parametrize('options, option', [
    (['type=file', 'data_dir={tmp}/file/sessions'], 'session.data_dir'),
    (['type=file', 'data_dir=/proc/nope'], 'session.data_dir'),
    (['type=ext:memcached', 'url=memcached://127.0.0.1:11211'],
     'session.url'),
    (['type=ext:memcached', 'url=127.0.0.1:11211,127.0.0.1:11212'],
     'session.url'),
    (['type=ext:redis', 'url=redis://127.0.0.1:6379/0?ssl_cert_reqs=bogus'],
     'session.url'),
    (['type=ext:database', 'url=sqlite:///{tmp}/sessions.db',
      'sa.pool_size=lots'], 'session.sa.pool_size'),
    (['type=ext:database', 'url=sqlite:///{tmp}/sessions.db',
      'sa.frobnicate=1'], 'session.sa.frobnicate'),
])
def test_wrong_values(call, tmp_path, options, option):
    """A value the store cannot take is a configuration error, in one
    line, with no traceback."""
    (tmp_path / 'file').write_text('')
    arguments = ['-o', 'secret=' + SECRET]
    for setting in options:
        arguments += ['-o', setting.format(tmp=tmp_path)]
    for command in ('cleanup', 'check'):
        result = call(command, *arguments)
        assert result.returncode == 2
        assert result.stderr.startswith(
            'beaker-sessions: FAILED: invalid configuration: %s: ' % option)
        assert 'Traceback' not in result.stderr


def test_check_unreachable_redis(call):
    result = call('check', '-o', 'type=ext:redis', '-o',
                  'url=redis://127.0.0.1:1/0', '-o', 'secret=' + SECRET)
    assert result.returncode == 1
    assert result.stderr.startswith(
        'beaker-sessions: FAILED: ext:redis session store at '
        'redis://127.0.0.1:1/0 (session.url): ')
    assert result.stdout.startswith('Configuration from command line: valid')


def test_check_memory(call):
    result = call('check', '-o', 'type=memory', '-o', 'secret=' + SECRET)
    assert result.returncode == 0, result.stderr
    assert 'OK: ' in result.stdout
    assert 'Note: the memory store lives inside each process' \
        in result.stdout


def read_all(screen):
    """What a terminal shows: a pty hands its output over in pieces."""
    shown = b''
    while select.select([screen], [], [], 0.5)[0]:
        piece = screen.read(4096)
        if not piece:
            break
        shown += piece
    return shown


def test_progress_on_a_terminal():
    """On a terminal the progress is one line, rewritten at each percent
    and ended when the cleanup ends."""
    controller, terminal = pty.openpty()
    with open(terminal, 'w') as stream, open(controller, 'rb',
                                             buffering=0) as screen:
        progress = Progress(stream, shown=True)
        for done in (0, 1, 1, 2):
            progress(done, 200)
        progress.end()
        stream.flush()
        shown = read_all(screen).decode()
    assert shown.replace('\r\n', '\n') == (
        '\r0 of 200 sessions examined (0%)'
        '\r2 of 200 sessions examined (1%)\n')
