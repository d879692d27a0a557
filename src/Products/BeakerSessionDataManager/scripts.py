"""The ``beaker-sessions`` console script.

``beaker-sessions cleanup`` removes expired sessions from the stores Beaker
never cleans up (file, dbm, SQL); run it from cron.  ``beaker-sessions
check`` validates the configuration and round-trips a probe record through
the store.  Both read ``<product-config beaker>`` from zope.conf the way
Zope does at start-up (without opening the ZODB), or take the options on
the command line.

Exit codes: 0 done, 1 the store failed, 2 the configuration or the command
line is wrong.
"""
import argparse
import os
import secrets
import sys
import time

from . import config
from .cleanup import Cleanup
from .cleanup import layout_for
from .config import SHARED_OPTIONS
from .interfaces import ConfigurationError
from .status import check_store
from .status import last_cleanup
from .store import TTL_MARGIN


OK, FAILED, WRONG_USAGE = 0, 1, 2
EXPIRING_TYPES = ('ext:redis', 'ext:rediscluster', 'ext:memcached')
NOUNS = {
    'expired': ('expired session', 'expired sessions'),
    'live': ('live session', 'live sessions'),
    'empty': ('empty record', 'empty records'),
    'unreadable': ('unreadable record', 'unreadable records'),
    'damaged': ('damaged file', 'damaged files'),
    'undated': ('record without _accessed_time',
                'records without _accessed_time'),
    'busy': ('session locked by its writer', 'sessions locked by writers'),
}
ORDER = ('expired', 'empty', 'damaged', 'unreadable', 'live', 'busy',
         'undated')


class UsageError(Exception):
    """The command line or the zope.conf it names cannot be used."""


def parser():
    common = argparse.ArgumentParser(add_help=False)
    source = common.add_argument_group('configuration')
    source.add_argument(
        '-C', '--config', metavar='ZOPE_CONF',
        help='read <product-config beaker> from this zope.conf')
    source.add_argument(
        '-o', '--option', metavar='NAME=VALUE', action='append', default=[],
        help='a Beaker session option, e.g. -o session.type=file -o '
             'session.data_dir=var/sessions/data (repeat it; overrides '
             'zope.conf; the "session." prefix may be left out)')

    main_parser = argparse.ArgumentParser(
        prog='beaker-sessions',
        description='Maintain the Beaker session store of a Zope site '
                    '(Products.BeakerSessionDataManager).',
        epilog='Exit codes: 0 done, 1 the store failed, 2 the '
               'configuration or the command line is wrong.')
    commands = main_parser.add_subparsers(
        dest='command', metavar='COMMAND', required=True)

    cleanup = commands.add_parser(
        'cleanup', parents=[common],
        help='remove expired sessions from file, dbm and SQL stores',
        description='Remove expired sessions from a file, dbm or SQL '
                    '(ext:database, ext:sqla) store. Safe while the site '
                    'serves: each session is checked again under the '
                    'lock the site writes it with, and a session used '
                    'meanwhile is kept. Redis and memcached need no '
                    'cleanup: their records expire by themselves.',
        epilog='For example, from cron: */15 * * * * '
               '/path/to/bin/beaker-sessions cleanup -C '
               '/path/to/etc/zope.conf')
    cleanup.add_argument(
        '-n', '--dry-run', action='store_true',
        help='remove nothing, report what would be removed')
    cleanup.add_argument(
        '-v', '--verbose', action='store_true',
        help='print the id of every session removed')
    cleanup.add_argument(
        '--progress', action='store_true',
        help='report progress on stderr even if it is no terminal')
    cleanup.add_argument(
        '--remove-unreadable', action='store_true',
        help='also remove records that cannot be decoded with the '
             'configured serializer and keys (if untouched for the '
             'timeout); by default they are kept and counted, since a '
             'wrong encrypt_key here would make every session look '
             'unreadable')
    cleanup.add_argument(
        '--grace', metavar='SECONDS', type=nonnegative, default=TTL_MARGIN,
        help='keep sessions this long past their timeout, for requests '
             'that read them just before (default: %(default)s)')
    cleanup.set_defaults(run=run_cleanup)

    check = commands.add_parser(
        'check', parents=[common],
        help='validate the configuration and test the store',
        description='Validate the configuration, then write, read and '
                    'delete a probe record in the store, and print a '
                    'verdict.')
    check.set_defaults(run=run_check)
    return main_parser


def nonnegative(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            'must be a whole number of seconds, not %r' % text)
    return value


def main(argv=None):
    arguments = parser().parse_args(argv)
    try:
        return arguments.run(arguments)
    except (UsageError, ConfigurationError) as exc:
        error('FAILED: invalid configuration: %s' % exc)
        return WRONG_USAGE
    except KeyboardInterrupt:
        error('interrupted')
        return 130
    except Exception as exc:
        # E.g. the store's directory cannot be made: no bare traceback.
        error('FAILED: %s: %s' % (type(exc).__name__, exc))
        return FAILED


def error(message):
    print('beaker-sessions: %s' % message, file=sys.stderr)


def read_zope_conf(path):
    """The ``<product-config beaker>`` settings and the var directory, as
    Zope reads them at start-up (ZConfig with Zope's schema; the ZODB is
    not opened)."""
    from ZConfig import ConfigurationError as ZConfigError
    from Zope2.Startup.options import ZopeWSGIOptions
    if not os.path.isfile(path):
        raise UsageError('-C %s: no such file' % path)
    try:
        zope_config = ZopeWSGIOptions(os.path.abspath(path))().configroot
    except ZConfigError as exc:
        raise UsageError('-C %s: %s' % (path, exc))
    settings = (zope_config.product_config or {}).get('beaker')
    if settings is None:
        raise UsageError('-C %s: no <product-config beaker> section' % path)
    return dict(settings), zope_config.clienthome


def configuration_from(arguments, need_secret=True):
    settings, var_dir, source = {}, None, 'command line'
    if arguments.config:
        settings, var_dir = read_zope_conf(arguments.config)
        source = arguments.config
    for option in arguments.option:
        name, equals, value = option.partition('=')
        name = name.strip()
        if not equals or not name:
            raise UsageError('-o %s: expected NAME=VALUE' % option)
        settings = override(settings, name, value)
    if not settings:
        raise UsageError('name a zope.conf with -C, or give the options '
                         'with -o (e.g. -o session.type=file -o '
                         'session.data_dir=...)')
    if not need_secret and not any(
            value for setting, value in settings.items()
            if config.option_name(setting) == 'secret'):
        # The cleanup signs no cookies; any good secret passes the check.
        settings = override(settings, 'secret', secrets.token_urlsafe(36))
    return config.SessionConfiguration(
        settings, source=source, var_dir=var_dir, existing_directories=True)


def override(settings, name, value):
    """``settings`` with option ``name`` set to ``value``, however they
    spell it (with a prefix or without)."""
    option = config.option_name(name)
    settings = {setting: given for setting, given in settings.items()
                if config.option_name(setting) != option}
    settings[name] = value
    return settings


def run_cleanup(arguments):
    configuration = configuration_from(arguments, need_secret=False)
    store = configuration.store
    if configuration.type in EXPIRING_TYPES:
        print('Nothing to clean up: the %s gives every record a time to '
              'live (session.timeout + %d s), so expired sessions vanish '
              'by themselves.' % (store.name, TTL_MARGIN))
        return OK
    if configuration.type == 'memory':
        print('Nothing to clean up: the memory store lives inside each Zope '
              'process, and its sessions end with it.')
        return OK
    if configuration.type == 'cookie':
        print('Nothing to clean up: with session.type cookie the sessions '
              'live in the browsers\' cookies.')
        return OK
    if not configuration.timeout:
        print('Nothing removed: session.timeout is 0, so sessions never '
              'expire.')
        return OK
    progress = Progress(sys.stderr, arguments.progress
                        or sys.stderr.isatty())
    try:
        cleanup = Cleanup(
            configuration, layout_for(configuration),
            dry_run=arguments.dry_run,
            remove_unreadable=arguments.remove_unreadable,
            grace=arguments.grace, on_progress=progress,
            on_remove=print_removed if arguments.verbose else None)
        report = cleanup.run()
    except Exception as exc:
        progress.end()
        error('FAILED: cannot clean up the %s: %s: %s'
              % (store.name, type(exc).__name__, exc))
        return FAILED
    progress.end()
    print_report(report, arguments)
    return FAILED if report.errors else OK


def print_removed(session_id, kind):
    print('%s (%s)' % (session_id, kind))


def print_report(report, arguments):
    verb = 'Would remove' if report.dry_run else 'Removed'
    print('%s %s from the %s (%d examined in %.1f s).' % (
        verb, counted(report.removed) or 'nothing', report.store_name,
        report.examined, report.seconds))
    if report.kept:
        print('Kept %s.' % counted(report.kept))
    if report.kept.get('unreadable') and not arguments.remove_unreadable:
        print('Unreadable records are kept: check session.encrypt_key, '
              'session.validate_key and session.data_serializer, or remove '
              'them with --remove-unreadable.')
    if report.leftovers:
        print('%s %d stale lock or temporary files.' % (
            verb, report.leftovers))
    if report.errors:
        error('FAILED: %d sessions could not be cleaned up; the first: %s'
              % (report.errors, report.first_error))


def counted(counts):
    """'3 expired sessions, 1 empty record' from {'expired': 3, ...}."""
    return ', '.join(
        '%d %s' % (counts[kind], NOUNS[kind][counts[kind] != 1])
        for kind in ORDER if counts.get(kind))


class Progress:
    """Reports progress on ``stream`` if ``shown``: each percent on a
    terminal (one line, rewritten), each ten percent elsewhere."""

    def __init__(self, stream, shown):
        self.stream = stream
        self.shown = shown
        self.tty = stream.isatty()
        self.last = None

    def __call__(self, done, total):
        if not self.shown:
            return
        percent = min(100, 100 * done // total) if total else 100
        step = percent if self.tty else percent - percent % 10
        if step == self.last:
            return
        self.last = step
        line = '%d of %d sessions examined (%d%%)' % (done, total, percent)
        if self.tty:
            self.stream.write('\r' + line)
        else:
            self.stream.write(line + '\n')
        self.stream.flush()

    def end(self):
        if self.shown and self.tty and self.last is not None:
            self.stream.write('\n')


def run_check(arguments):
    configuration = configuration_from(arguments)
    print('Configuration from %s: valid (session.type %s, session.timeout '
          '%s).' % (configuration.source, configuration.type,
                    configuration.timeout or '0: never expire'))
    print('Shared settings digest %s: the same on every Zope instance that '
          'shares the sessions, or their settings of %s differ.' % (
              configuration.shared_digest(), ', '.join(
                  'session.' + name for name in SHARED_OPTIONS)))
    if configuration.type == 'cookie':
        print('OK: the sessions live in the browsers\' cookies; there is no '
              'store on the server to check.')
        return OK
    status = check_store(configuration)
    if not status.ok:
        error(status.verdict())
        return FAILED
    print(status.verdict())
    if configuration.type == 'memory':
        print('Note: the memory store lives inside each process; this check '
              'tested a store of its own.')
    elif layout_for(configuration) is not None:
        when = last_cleanup(configuration)
        if when is None:
            print('Expired sessions have never been cleaned up: run '
                  '"beaker-sessions cleanup" from cron.')
        else:
            print('Expired sessions last cleaned up %s.' % time.strftime(
                '%Y-%m-%d %H:%M:%S', time.localtime(when)))
    return OK
