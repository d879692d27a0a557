"""Time ``beaker-sessions cleanup`` over 20,000 expired PostgreSQL sessions.

Not part of the test suite.  Run it from a checkout whose virtualenv has the
product installed, with PostgreSQL at hand::

    .venv/bin/python benchmarks/cleanup_sql.py [--sessions 20000]
        [--url postgresql+psycopg2://postgres@127.0.0.1:5432/test]

It makes a table of its own, inserts the expired sessions (rows as the
product writes them, last written two hours ago) and a few live ones
through the product's store, runs the installed ``beaker-sessions
cleanup`` on them as cron would, checks that exactly the expired ones are
gone, prints the time the cleanup took and how many transactions it
committed, and drops the table.
"""
import argparse
import os
import pickle
import subprocess
import sys
import time
import uuid
from datetime import datetime

import sqlalchemy as sa

from Products.BeakerSessionDataManager import config
from Products.BeakerSessionDataManager.cleanup import layout_for
from Products.BeakerSessionDataManager.store import RECORD_KEY


SECRET = 'benchmark-secret-0123456789-abcdefghijklmnop'
TIMEOUT = 1200
LIVE = 100
SCRIPT = os.path.join(os.path.dirname(sys.executable), 'beaker-sessions')
URL = 'postgresql+psycopg2://postgres@127.0.0.1:5432/test'


def commits(engine):
    """Transactions committed in the database so far (PostgreSQL's
    statistics, which lag a little: read after a pause)."""
    time.sleep(1)
    with engine.connect() as connection:
        connection.execute(sa.text('SELECT pg_stat_clear_snapshot()'))
        return connection.execute(sa.text(
            'SELECT xact_commit FROM pg_stat_database '
            'WHERE datname = current_database()')).scalar()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sessions', type=int, default=20000,
                        help='expired sessions to write (default 20000)')
    parser.add_argument('--url', default=URL, help='the database')
    arguments = parser.parse_args()
    expired = arguments.sessions
    settings = {'session.type': 'ext:database', 'session.url': arguments.url,
                'session.table_name': 'beaker_bench_%s' % uuid.uuid4().hex[:8],
                'session.secret': SECRET, 'session.timeout': str(TIMEOUT)}
    configuration = config.SessionConfiguration(settings)
    store = configuration.store
    table = layout_for(configuration).table
    engine = sa.create_engine(arguments.url)
    try:
        started = time.time()
        long_ago = started - 2 * 3600
        record = {'_creation_time': long_ago, '_accessed_time': long_ago,
                  'cart': ['book', 'pen']}
        data = pickle.dumps({RECORD_KEY: store.encode(record)})
        written = datetime.fromtimestamp(long_ago)
        rows = [{'namespace': '%032x' % number, 'data': data,
                 'accessed': written, 'created': written}
                for number in range(expired)]
        with engine.begin() as connection:
            connection.execute(
                table.insert().values(data=sa.bindparam(
                    'data', type_=sa.LargeBinary)), rows)
        now = time.time()
        for number in range(expired, expired + LIVE):
            store.merge('%032x' % number, lambda old: {
                '_creation_time': now, '_accessed_time': now})
        print('Wrote %d expired and %d live sessions in %.0f s.'
              % (expired, LIVE, time.time() - started))
        options = [arg for name, value in settings.items()
                   for arg in ('-o', '%s=%s' % (name, value))]
        before = commits(engine)
        started = time.time()
        result = subprocess.run([SCRIPT, 'cleanup'] + options,
                                capture_output=True, text=True)
        seconds = time.time() - started
        transactions = commits(engine) - before
        print(result.stdout.strip() or result.stderr.strip())
        with engine.connect() as connection:
            left = connection.execute(sa.select(table.c.namespace)).scalars()
            left = {int(name, 16) for name in left if len(name) == 32}
        assert result.returncode == 0, result.stderr
        assert left == set(range(expired, expired + LIVE)), len(left)
        print('beaker-sessions cleanup removed %d expired PostgreSQL '
              'sessions in %.1f s (%.2f ms a session), process start '
              'included, in about %d transactions.'
              % (expired, seconds, seconds * 1000 / expired, transactions))
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text('DROP TABLE IF EXISTS %s'
                                       % settings['session.table_name']))
        engine.dispose()


if __name__ == '__main__':
    main()
