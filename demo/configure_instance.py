"""Prepare a mkwsgiinstance-made Zope instance for the Beaker demo.

Usage: python demo/configure_instance.py INSTANCE_DIR [PORT]

- keeps a random 48-character Beaker secret in INSTANCE_DIR/etc/beaker-secret,
  made once, so that restarting the instance keeps its sessions;
- adds a ``<product-config beaker>`` section (file store under
  INSTANCE_DIR/var/sessions) to etc/zope.conf unless it has one already, so a
  section edited by hand (say, to try redis) is left alone;
- makes the WSGI server listen on 127.0.0.1:PORT only (default 8080).
"""
import os
import re
import secrets
import sys


PRODUCT_CONFIG = """
<product-config beaker>
    session.type            file
    session.data_dir        $INSTANCE/var/sessions/data
    session.lock_dir        $INSTANCE/var/sessions/lock
    session.key             beaker.session.id
    session.secret          {secret}
</product-config>
"""


def read_secret(path):
    """Return the secret kept in ``path``, making it on first use."""
    if not os.path.exists(path):
        # token_urlsafe(36) is 48 characters; the product requires >= 32.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(secrets.token_urlsafe(36) + '\n')
    with open(path) as f:
        return f.read().strip()


def add_product_config(zope_conf, secret):
    """Append the beaker section to ``zope_conf`` unless it has one."""
    with open(zope_conf) as f:
        text = f.read()
    if re.search(r'^\s*<product-config\s+beaker\s*>', text, re.M):
        return False
    with open(zope_conf, 'a') as f:
        f.write(PRODUCT_CONFIG.format(secret=secret))
    return True


def set_listen_address(zope_ini, port):
    """Make the ``[server:main]`` section listen on 127.0.0.1:``port``."""
    with open(zope_ini) as f:
        lines = f.read().splitlines(keepends=True)
    section = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith('['):
            section = stripped
        elif section == '[server:main]':
            if re.match(r'host\s*=', stripped):
                lines[i] = 'host = 127.0.0.1\n'
            elif re.match(r'port\s*=', stripped):
                lines[i] = f'port = {port}\n'
    with open(zope_ini, 'w') as f:
        f.writelines(lines)


def main(argv):
    if len(argv) not in (2, 3):
        sys.exit(__doc__)
    instance = argv[1]
    port = int(argv[2]) if len(argv) == 3 else 8080
    etc = os.path.join(instance, 'etc')
    secret = read_secret(os.path.join(etc, 'beaker-secret'))
    if add_product_config(os.path.join(etc, 'zope.conf'), secret):
        print(f'Added <product-config beaker> to {etc}/zope.conf')
    set_listen_address(os.path.join(etc, 'zope.ini'), port)


if __name__ == '__main__':
    main(sys.argv)
