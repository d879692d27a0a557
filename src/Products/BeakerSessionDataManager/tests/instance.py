"""A real Zope instance for the tests: mkwsgiinstance, zope.conf, runwsgi.

What the in-process publisher cannot show needs a server process: several
threads at once, two instances sharing one store, a restart, a browser.
``ZopeInstance`` makes an instance in a temporary directory with the same
commands a user runs, writes the ``<product-config beaker>`` block, sets the
root up with ``zconsole`` while the server is down (FileStorage admits one
process) and runs ``runwsgi`` on a free loopback port::

    with ZopeInstance({'session.type': 'file', ...}) as zope:
        zope.setup(BEAKER_SESSION_DATA_MANAGER, COUNTER_SCRIPT)
        zope.start()
        requests.get(zope.url('count'))
"""
import http.client
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.request

from .servers import free_port
from .servers import listening
from .servers import wait_until


ADMIN = ('admin', 'admin')
BIN = os.path.dirname(sys.executable)

# Scripts for ``setup``; zconsole binds ``app`` to the Zope root.
BEAKER_SESSION_DATA_MANAGER = '''
if 'session_data_manager' in app.objectIds():
    app.manage_delObjects(['session_data_manager'])
app.manage_addProduct['BeakerSessionDataManager'] \\
    .addBeakerSessionDataManager('session_data_manager')
'''
# Stock sessions as a new Zope has them, but in a temporary folder of the
# main database: mkwsgiinstance mounts no temporary storage.
STOCK_SESSION_DATA_MANAGER = '''
from Products.Sessions import install_session_data_manager
from Products.TemporaryFolder import TemporaryContainer
if 'temp_folder' not in app.objectIds():
    app._setObject('temp_folder', TemporaryContainer('temp_folder'))
if 'session_data_manager' in app.objectIds():
    app.manage_delObjects(['session_data_manager'])
install_session_data_manager(app)
'''


def python_script(id, body, params=''):
    """A ``setup`` script adding (or replacing) a Python Script in the
    root."""
    return textwrap.dedent('''
        if %(id)r in app.objectIds():
            app.manage_delObjects([%(id)r])
        app.manage_addProduct['PythonScripts'].manage_addPythonScript(%(id)r)
        app[%(id)r].ZPythonScript_edit(%(params)r, %(body)r)
        assert not app[%(id)r].errors, app[%(id)r].errors
        ''') % {'id': id, 'body': textwrap.dedent(body), 'params': params}


COUNTER_SCRIPT = python_script('count', '''\
    session = container.REQUEST.SESSION
    session['count'] = session.get('count', 0) + 1
    return session['count']
    ''')

# Reads the session, works a little (the window in which another request
# commits), then writes its own key.
WRITE_SCRIPT = python_script('write', '''\
    session = container.REQUEST.SESSION
    seen = len(session.keys())
    for i in range(2000):
        pass
    session[key] = seen
    return 'ok'
    ''', params='key')


def new_secret():
    return secrets.token_urlsafe(36)


class ZopeInstance:
    """One Zope instance made by mkwsgiinstance, served by runwsgi.

    ``product_config`` holds the ``<product-config beaker>`` options; None
    leaves the block out.  ``threads`` is waitress' thread count.
    """

    def __init__(self, product_config=None, threads=4, port=None,
                 directory=None):
        self.owns_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix='zope-')
        self.port = port or free_port()
        self.threads = threads
        self.process = None
        if not os.path.exists(self.etc('zope.conf')):
            subprocess.run(
                [os.path.join(BIN, 'mkwsgiinstance'), '-d', self.directory,
                 '-u', '%s:%s' % ADMIN],
                check=True, stdout=subprocess.DEVNULL)
        self._zope_conf = self._read(self.etc('zope.conf'))
        self.configure(product_config)
        self._write_server_settings()

    def etc(self, name):
        return os.path.join(self.directory, 'etc', name)

    def var(self, *names):
        return os.path.join(self.directory, 'var', *names)

    @staticmethod
    def _read(path):
        with open(path) as f:
            return f.read()

    def configure(self, product_config):
        """(Re)write the ``<product-config beaker>`` block; takes effect at
        the next start."""
        text = self._zope_conf
        if product_config is not None:
            lines = ''.join('    %s %s\n' % (name, value)
                            for name, value in product_config.items())
            text += '\n<product-config beaker>\n%s</product-config>\n' % lines
        with open(self.etc('zope.conf'), 'w') as f:
            f.write(text)

    def _write_server_settings(self):
        text = self._read(self.etc('zope.ini'))
        text = re.sub(r'(?m)^host = .*$', 'host = 127.0.0.1', text)
        text = re.sub(r'(?m)^port = .*$', 'port = %s\nthreads = %s'
                      % (self.port, self.threads), text, count=1)
        with open(self.etc('zope.ini'), 'w') as f:
            f.write(text)

    def setup(self, *scripts):
        """Run ``scripts`` against the root with zconsole, then commit.

        Only while the server is down: FileStorage admits one process.
        """
        assert self.process is None, 'stop the instance first'
        script = os.path.join(self.directory, 'setup_script.py')
        with open(script, 'w') as f:
            f.write('import transaction\n')
            for text in scripts:
                f.write(textwrap.dedent(text) + '\n')
            f.write('transaction.commit()\n'
                    'app._p_jar.db().close()\n')
        result = subprocess.run(
            [os.path.join(BIN, 'zconsole'), 'run', self.etc('zope.conf'),
             script], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError('zconsole failed:\n%s%s'
                               % (result.stdout, result.stderr))
        return result.stdout

    def start(self, timeout=60):
        log = open(self.var('runwsgi.log'), 'ab')
        self.process = subprocess.Popen(
            [os.path.join(BIN, 'runwsgi'), self.etc('zope.ini')],
            cwd=self.directory, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_until(self._serving, timeout=timeout,
                       what='Zope on port %s' % self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError('Zope did not start:\n%s' % self.log())
        return self

    def _serving(self):
        if self.process.poll() is not None:
            raise RuntimeError('runwsgi exited:\n%s' % self.log())
        if not listening(self.port):
            return False
        try:
            urllib.request.urlopen(self.url(), timeout=5).close()
        except urllib.error.HTTPError:
            pass  # Serving, if not this page.
        except OSError:
            return False
        return True

    def stop(self):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self):
        self.stop()
        return self.start()

    def url(self, path=''):
        return 'http://127.0.0.1:%s/%s' % (self.port, path.lstrip('/'))

    def get(self, path, cookie=None, timeout=30):
        """GET ``path`` sending the ``Cookie`` header ``cookie`` as is;
        returns ``(status, set_cookie, body_text)``, errors included."""
        connection = http.client.HTTPConnection(
            '127.0.0.1', self.port, timeout=timeout)
        try:
            connection.request(
                'GET', '/' + path.lstrip('/'),
                headers={'Cookie': cookie} if cookie else {})
            response = connection.getresponse()
            body = response.read().decode('utf-8', 'replace')
            return response.status, response.getheader('Set-Cookie'), body
        finally:
            connection.close()

    def log(self, name='runwsgi.log'):
        """The tail of a log file under var/ (event.log: Zope's)."""
        path = self.var(name) if name == 'runwsgi.log' else self.var(
            'log', name)
        if not os.path.exists(path):
            return ''
        with open(path, errors='replace') as f:
            return f.read()[-5000:]

    def cleanup(self):
        self.stop()
        if self.owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.cleanup()
