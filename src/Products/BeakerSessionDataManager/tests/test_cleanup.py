"""Removing expired sessions from real file, dbm and SQL stores.

Sessions are written through the product's own store (``merge``); "time
passes" by setting their ``_accessed_time`` and the time their file or row
was written into the past, as an hour without visits would.
"""
import fcntl
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager import namespaces
from Products.BeakerSessionDataManager import status
from Products.BeakerSessionDataManager.cleanup import MAX_ERRORS_IN_A_ROW
from Products.BeakerSessionDataManager.cleanup import SESSION_FILE
from Products.BeakerSessionDataManager.cleanup import Cleanup
from Products.BeakerSessionDataManager.cleanup import layout_for
from Products.BeakerSessionDataManager.cleanup import lock_name
from Products.BeakerSessionDataManager.cleanup import walk
from Products.BeakerSessionDataManager.sqlstore import BATCH_SIZE
from Products.BeakerSessionDataManager.store import RECORD_KEY
from Products.BeakerSessionDataManager.tests import servers
from Products.BeakerSessionDataManager.tests import stores


SECRET = 'Qv3s9dJk2LmN8pRt5WxYz1AbCdEfGhIjKl'
TIMEOUT = 600
LONG_AGO = time.time() - 3600
STORES = ['file', 'dbm', 'sqlite', 'postgresql', 'mariadb']
SCRIPT = os.path.join(os.path.dirname(sys.executable), 'beaker-sessions')


def store_settings(store, tmp_path):
    """``<product-config beaker>`` options for ``store`` in ``tmp_path``,
    and a function that drops what the test made outside it."""
    settings = {'session.secret': SECRET, 'session.timeout': str(TIMEOUT),
                'session.data_dir': str(tmp_path / 'data'),
                'session.lock_dir': str(tmp_path / 'lock')}
    if store in ('file', 'dbm'):
        settings['session.type'] = store
        return settings, lambda: None
    settings['session.type'] = 'ext:database'
    if store == 'sqlite':
        settings['session.url'] = 'sqlite:///%s' % (tmp_path / 'sessions.db')
        return settings, lambda: None
    settings['session.url'] = servers.shared_mariadb() \
        if store == 'mariadb' else servers.postgresql_url()
    settings['session.table_name'] = table = servers.unique_name()

    def drop():
        import sqlalchemy
        engine = sqlalchemy.create_engine(settings['session.url'])
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text('DROP TABLE IF EXISTS %s'
                                               % table))
        engine.dispose()
    return settings, drop


@pytest.fixture(params=STORES)
def store_type(request):
    return request.param


@pytest.fixture
def settings(store_type, tmp_path):
    settings, drop = store_settings(store_type, tmp_path)
    yield settings
    drop()


@pytest.fixture
def configuration(settings):
    return config.SessionConfiguration(settings, source='test')


def new_ids(count, first=''):
    """``count`` session ids, starting with ``first``, in sorted order."""
    return sorted(first + secrets.token_hex(16)[len(first):]
                  for _ in range(count))


def write(configuration, session_ids, accessed, **data):
    """Write sessions through the product's store, last accessed at
    ``accessed``, as the product writes them."""
    for session_id in session_ids:
        record = dict(data, _creation_time=accessed, _accessed_time=accessed)
        configuration.store.merge(session_id, lambda old: dict(record))


def backdate(configuration, session_ids, when=LONG_AGO):
    """Make the files or rows of ``session_ids`` look written at
    ``when``."""
    layout = layout_for(configuration)
    session_ids = set(session_ids)
    if hasattr(layout, 'root'):
        for entry in walk(layout.root):
            match = SESSION_FILE(entry.name)
            if match and match.group(1) in session_ids:
                os.utime(entry.path, (when, when))
        return
    table = layout.table
    with layout.bind.begin() as connection:
        connection.execute(table.update().where(
            table.c.namespace.in_(session_ids)).values(
            accessed=datetime.fromtimestamp(when)))


def expired(configuration, count, first=''):
    session_ids = new_ids(count, first)
    write(configuration, session_ids, LONG_AGO, cart=['old'])
    backdate(configuration, session_ids)
    return session_ids


def stored(configuration):
    """The ids of the sessions in the store, read from its files or rows."""
    layout = layout_for(configuration)
    if hasattr(layout, 'root'):
        return {SESSION_FILE(entry.name).group(1)
                for entry in walk(layout.root) if SESSION_FILE(entry.name)}
    with layout.bind.connect() as connection:
        return {name for name, in connection.execute(
            layout.table.select().with_only_columns(layout.table.c.namespace))
            if name != 'beaker-sessions:last-cleanup'}


def lock_files(configuration):
    layout = layout_for(configuration)
    return {entry.name[:-len('.lock')] for entry in walk(layout.lock_dir)}


def clean(configuration, **options):
    return Cleanup(configuration, layout_for(configuration),
                   **options).run()


def test_expired_sessions_go_live_ones_stay(configuration):
    old = expired(configuration, 20)
    live = new_ids(5)
    write(configuration, live, time.time(), cart=['new'])
    # Written long ago, used a minute ago: the record decides.
    used = new_ids(2)
    write(configuration, used, time.time() - 60)
    backdate(configuration, used)
    # Expired by its access time, but written a minute ago: kept too.
    rewritten = new_ids(1)
    write(configuration, rewritten, LONG_AGO)

    report = clean(configuration)

    assert report.removed == {'expired': 20}
    assert report.removed_ids == set(old)
    assert report.kept == {'live': 2}  # the other ones are no candidates
    assert stored(configuration) == set(live + used + rewritten)
    for session_id in live:
        assert configuration.store.load(session_id)['cart'] == ['new']
    assert status.last_cleanup(configuration) == pytest.approx(
        time.time(), abs=30)


def test_sql_rows_go_a_batch_a_transaction(tmp_path):
    """The rows of expired sessions are examined and removed a batch at a
    time, each batch in one transaction, under the locks of its sessions:
    a transaction for each row made the commits set the pace."""
    url = servers.postgresql_url()
    counter = servers.PostgreSQLQueryCounter(*servers.host_and_port(url))
    settings, drop = store_settings('postgresql', tmp_path)
    settings['session.url'] = counter.url(url)
    try:
        configuration = config.SessionConfiguration(settings, source='test')
        old = expired(configuration, 2 * BATCH_SIZE + 50)
        live = new_ids(3)
        write(configuration, live, time.time())
        del counter.queries[:]
        report = clean(configuration)
        assert report.removed == {'expired': len(old)}
        assert stored(configuration) == set(live)
        commits = [query for query in counter.queries
                   if query.strip().upper().startswith('COMMIT')]
        # Three batches, and the record of the run.
        assert len(commits) == 4, counter.queries[:20]
    finally:
        drop()
        counter.close()


@pytest.mark.parametrize('store_type', ['postgresql'])
def test_a_session_in_use_is_left_alone(configuration, monkeypatch):
    """A session whose lock a writer holds when the cleanup reaches it
    stays, counted as busy, and the others of its batch go; the next run
    removes it."""
    monkeypatch.setattr(namespaces, 'LOCK_WAIT', 0.5)
    old = expired(configuration, 5)
    store = configuration.store
    holder = store._locked(store._namespace(old[2]))
    holder.__enter__()
    try:
        report = clean(configuration)
    finally:
        holder.__exit__(None, None, None)
    assert report.removed == {'expired': 4}
    assert report.kept == {'busy': 1}
    assert stored(configuration) == {old[2]}
    assert clean(configuration).removed == {'expired': 1}
    assert stored(configuration) == set()


@pytest.mark.parametrize('store_type', ['file', 'dbm'])
def test_lock_files_of_removed_sessions_go(configuration, store_type):
    """SQL stores lock in the database, file and dbm stores in files."""
    old = expired(configuration, 5)
    live = new_ids(2)
    write(configuration, live, time.time())
    locks = lock_files(configuration)
    assert {lock_name(session_id) for session_id in old + live} <= locks
    # What a read of an unknown id through Beaker's namespace (Beaker's
    # own sessions; this product's dbm store) left long ago: a lock file,
    # and with dbm an empty dbm file.  The file store reads without one.
    unknown = new_ids(1)
    assert configuration.store.load(unknown[0]) is None
    if store_type == 'file':
        assert lock_files(configuration) == locks
        namespace = configuration.store._namespace(unknown[0])
        namespace.acquire_read_lock()
        namespace.release_read_lock()
    orphan = lock_files(configuration) - locks
    assert orphan == {lock_name(unknown[0])}
    for entry in walk(layout_for(configuration).lock_dir):
        if entry.name[:-len('.lock')] in orphan:
            os.utime(entry.path, (LONG_AGO, LONG_AGO))
    backdate(configuration, unknown)

    report = clean(configuration)

    assert report.removed['expired'] == 5
    assert report.leftovers == (1 if store_type == 'file' else 0)
    assert stored(configuration) == set(live)
    remaining = lock_files(configuration)
    assert not remaining & {lock_name(session_id) for session_id in old}
    assert not remaining & orphan
    assert {lock_name(session_id) for session_id in live} <= remaining


def test_dry_run_removes_nothing(configuration):
    old = expired(configuration, 10)
    before = stored(configuration)

    report = clean(configuration, dry_run=True)

    assert report.removed == {'expired': 10}
    assert report.removed_ids == set(old)
    assert stored(configuration) == before
    assert status.last_cleanup(configuration) is None


@pytest.mark.parametrize('store_type', ['file', 'dbm'])
def test_records_without_a_session(configuration):
    """What deleted sessions leave behind goes once it is old (SQL stores
    delete the row with the session)."""
    emptied = new_ids(3)
    write(configuration, emptied, time.time())
    for session_id in emptied:
        configuration.store.delete(session_id)
    backdate(configuration, emptied[:2])

    report = clean(configuration)

    assert report.removed == {'empty': 2}
    assert stored(configuration) == set(emptied[2:])


def test_unreadable_records_stay_unless_asked(settings, configuration):
    other = config.SessionConfiguration(
        dict(settings, **{'session.data_serializer': 'json'}), source='test')
    unreadable = new_ids(3)
    write(configuration, unreadable, LONG_AGO)
    backdate(configuration, unreadable[:2])
    json_reader = layout_for(other)

    report = Cleanup(other, json_reader).run()
    assert report.kept == {'unreadable': 2}
    assert stored(configuration) == set(unreadable)

    report = Cleanup(other, json_reader, remove_unreadable=True).run()
    assert report.removed == {'unreadable': 2}
    # Written recently, maybe by a site with other keys: kept.
    assert stored(configuration) == set(unreadable[2:])


def test_damaged_files_go_once_old(tmp_path):
    """Session files a crash cut short: no configuration reads them."""
    configuration = file_configuration(tmp_path)
    damaged = new_ids(3)
    write(configuration, damaged, LONG_AGO)
    for session_id in damaged:
        path = configuration.store.path(session_id)
        os.truncate(path, os.path.getsize(path) // 2)
    backdate(configuration, damaged[:2])

    report = clean(configuration)

    assert report.removed == {'damaged': 2}
    assert report.kept == {}
    # Written recently: maybe by a writer still at it.
    assert stored(configuration) == set(damaged[2:])


@pytest.mark.parametrize('store_type', ['sqlite', 'postgresql'])
def test_damaged_rows_go_once_old(configuration):
    """Rows no Python 3 can unpickle (written by Python 2): damaged."""
    damaged = new_ids(3)
    write(configuration, damaged, LONG_AGO)
    layout = layout_for(configuration)
    stores.overwrite_rows(layout.bind.url, layout.table.name, damaged,
                          stores.PYTHON2_ROW)
    backdate(configuration, damaged[:2])

    report = clean(configuration)

    assert report.removed == {'damaged': 2}
    assert report.kept == {}
    assert stored(configuration) == set(damaged[2:])


def test_records_that_would_run_code(configuration, store_type):
    """A file, dbm value or row whose pickle would call a function: never
    loaded, and removed once old; nor is a planted last-cleanup row."""
    planted = new_ids(3)
    write(configuration, planted, LONG_AGO)
    store = configuration.store
    layout = layout_for(configuration)
    for session_id in planted:
        if store_type == 'file':
            with open(store.path(session_id), 'wb') as f:
                f.write(stores.RUNS_CODE)
        elif store_type == 'dbm':
            namespace = store._namespace(session_id)
            namespace.acquire_write_lock()
            try:
                namespace.dbm[RECORD_KEY] = stores.RUNS_CODE
            finally:
                namespace.release_write_lock()
    if store_type not in ('file', 'dbm'):
        stores.overwrite_rows(layout.bind.url, layout.table.name, planted,
                              stores.RUNS_CODE)
    backdate(configuration, planted[:2])
    stores.CALLS.clear()

    report = clean(configuration)

    assert sum(report.removed.values()) == 2
    assert stored(configuration) == set(planted[2:])
    if store_type not in ('file', 'dbm'):
        stores.overwrite_rows(layout.bind.url, layout.table.name,
                              ['beaker-sessions:last-cleanup'],
                              stores.RUNS_CODE)
        assert status.last_cleanup(configuration) is None
    assert stores.CALLS == []


def test_records_without_access_time_stay(configuration):
    undated = new_ids(2)
    for session_id in undated:
        configuration.store.merge(session_id, lambda old: {'a': 1})
    backdate(configuration, undated)

    report = clean(configuration)

    assert report.kept == {'undated': 2}
    assert stored(configuration) == set(undated)


def test_status(configuration):
    expired(configuration, 3)
    result = status.check_store(configuration)
    assert result.ok, result.error
    assert result.error is None
    assert result.round_trip_ms > 0
    assert result.session_count == 3  # the probe left nothing behind
    assert status.last_cleanup(configuration) is None


def test_status_of_an_unreachable_store(tmp_path):
    configuration = config.SessionConfiguration({
        'session.type': 'ext:database', 'session.secret': SECRET,
        'session.url': 'postgresql+psycopg2://nobody@127.0.0.1:1/none'},
        source='test')
    result = status.check_store(configuration)
    assert not result.ok
    assert 'OperationalError' in result.error
    assert result.round_trip_ms is None
    assert result.verdict().startswith('FAILED: ext:database session store')


def test_status_shows_and_logs_an_error_not_the_stores(tmp_path, caplog):
    # Not the store's failure, maybe a bug of ours: shown as any other
    # (the page still answers), and its traceback logged.
    configuration = config.SessionConfiguration({
        'session.type': 'file', 'session.secret': SECRET,
        'session.data_dir': str(tmp_path)}, source='test')

    def load(session_id):
        raise KeyError('a bug')
    configuration.store.load = load
    result = status.check_store(configuration)
    assert result.error == "KeyError: 'a bug'"
    assert [record.exc_info[0] for record in caplog.records] == [KeyError]


def test_concurrent_writer_loses_nothing(configuration, settings,
                                         store_type):
    """The cleanup runs as a separate process while this one keeps
    writing sessions that looked expired when the cleanup listed the
    store: every write must survive."""
    # SQL commits are slower: fewer sessions keep the test short.
    old = expired(configuration, 400 if store_type in ('file', 'dbm')
                  else 50, first='0')
    # Looked expired when listed; revived meanwhile.  Their ids sort
    # last, so the cleanup reaches them after the writer has started.
    revived = expired(configuration, 20, first='f') \
        + expired(configuration, 5, first='1')
    live = new_ids(5, first='e')
    write(configuration, live, time.time())
    writes = {session_id: [] for session_id in revived + live}
    options = [arg for name, value in settings.items()
               for arg in ('-o', '%s=%s' % (name, value))]
    cleanup = subprocess.Popen(
        [SCRIPT, 'cleanup', '--progress'] + options,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    failures = []

    def writer():
        number = 0
        while not stop.is_set() or number < 3:
            for session_id in writes:
                def apply(record, number=number):
                    record = record or {'_creation_time': time.time()}
                    record['writes'] = record.get('writes', []) + [number]
                    record['_accessed_time'] = time.time()
                    return record
                try:
                    configuration.store.merge(session_id, apply)
                except Exception as exc:  # reported below
                    failures.append(exc)
                    return
                writes[session_id].append(number)
                # A site's requests come with gaps, in which SQLite lets
                # the cleanup in.
                time.sleep(0.002)
            number += 1

    # The cleanup has listed its candidates when it reports progress.
    assert cleanup.stderr.readline().startswith('0 of ')
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        out, err = cleanup.communicate(timeout=120)
    finally:
        stop.set()
        thread.join()
    assert cleanup.returncode == 0, out + err
    assert not failures
    for session_id, numbers in writes.items():
        assert configuration.store.load(session_id)['writes'] == numbers
    assert not stored(configuration) & set(old)
    if store_type in ('file', 'dbm'):
        # Some were revived before the cleanup reached them.  (The SQL
        # stores examine a hundred rows in one transaction: it may reach
        # them first; test_a_session_used_after_the_listing_stays makes
        # sure.)
        assert 'live session' in out


def test_a_session_used_after_the_listing_stays(configuration):
    """A session that was expired when the cleanup listed the store, and
    that a request used before the cleanup examined it, stays."""
    old = expired(configuration, 5)
    layout = layout_for(configuration)
    listed = layout.candidates

    def candidates(cutoff):
        total, session_ids = listed(cutoff)
        session_ids = list(session_ids)
        write(configuration, [old[2]], time.time(), cart=['used'])
        return total, iter(session_ids)
    layout.candidates = candidates
    report = Cleanup(configuration, layout).run()
    assert report.removed == {'expired': 4}
    assert report.kept == {'live': 1}
    assert stored(configuration) == {old[2]}
    assert configuration.store.load(old[2])['cart'] == ['used']


def file_configuration(tmp_path):
    settings, _ = store_settings('file', tmp_path)
    return config.SessionConfiguration(settings, source='test')


def old_file(path):
    """A file at ``path``, last written long ago."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('left behind')
    os.utime(path, (LONG_AGO, LONG_AGO))
    return path


def lock_path(layout, name):
    """Where Beaker's FileSynchronizer puts the lock file ``name``."""
    return os.path.join(layout.lock_dir, name[0], name[:2], name + '.lock')


def test_a_store_never_written_to(tmp_path):
    """The cleanup may run before the site's first session."""
    configuration = file_configuration(tmp_path)
    report = clean(configuration)
    assert (report.examined, report.removed, report.errors) == (0, {}, 0)
    assert status.last_cleanup(configuration) is not None


def test_leftovers_of_dead_writers(tmp_path):
    """Half-written temp files and unused lock files go once they are old;
    a lock somebody holds stays, however old."""
    configuration = file_configuration(tmp_path)
    live = new_ids(1)
    write(configuration, live, time.time())
    layout = layout_for(configuration)
    session_dir = os.path.dirname(next(walk(layout.root)).path)
    old_temp = old_file(os.path.join(
        session_dir, new_ids(1)[0] + '.cache.temp'))
    new_temp = os.path.join(session_dir, new_ids(1)[0] + '.cache.temp')
    with open(new_temp, 'w') as f:
        f.write('being written')
    unused = old_file(lock_path(layout, 'a' * 40))
    held = old_file(lock_path(layout, 'b' * 40))

    report = clean(configuration, dry_run=True)
    assert report.leftovers == 3  # a dry run does not try the locks
    assert all(map(os.path.exists, (old_temp, unused, held)))

    with open(held) as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        report = clean(configuration)
    assert report.leftovers == 2
    assert not os.path.exists(old_temp) and not os.path.exists(unused)
    assert os.path.exists(held) and os.path.exists(new_temp)
    assert stored(configuration) == set(live)


def test_a_session_that_cannot_be_cleaned(tmp_path):
    """One bad session is counted and reported; the others are cleaned."""
    configuration = file_configuration(tmp_path)
    broken, old = new_ids(1), expired(configuration, 2)
    write(configuration, broken, LONG_AGO)
    backdate(configuration, broken)
    # Its lock file cannot be opened.
    layout = layout_for(configuration)
    lock = lock_path(layout, lock_name(broken[0]))
    if os.path.exists(lock):
        os.remove(lock)
    os.makedirs(lock)

    report = clean(configuration)

    assert report.removed == {'expired': 2}
    assert report.removed_ids == set(old)
    assert report.errors == 1
    assert report.first_error.startswith(broken[0] + ': IsADirectoryError')
    assert stored(configuration) == set(broken)


def test_a_store_that_fails_every_session_gives_up(tmp_path):
    configuration = file_configuration(tmp_path)
    broken = expired(configuration, MAX_ERRORS_IN_A_ROW + 5)
    layout = layout_for(configuration)
    for session_id in broken:
        lock = lock_path(layout, lock_name(session_id))
        if os.path.exists(lock):
            os.remove(lock)
        os.makedirs(lock)
    with pytest.raises(IsADirectoryError):
        clean(configuration)
    assert stored(configuration) == set(broken)


@pytest.mark.parametrize('options', [
    {'session.type': 'memory'},
    {'session.type': 'ext:redis', 'session.url': 'redis://127.0.0.1:1/0'},
])
def test_no_last_cleanup_where_records_expire_by_themselves(options):
    configuration = config.SessionConfiguration(
        dict(options, **{'session.secret': SECRET}), source='test')
    assert status.last_cleanup(configuration) is None
