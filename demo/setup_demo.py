"""Install the Beaker session data manager and the demo pages in a Zope root.

Run it with ``zconsole``, which binds ``app`` to the Zope root::

    zconsole run var/demo/etc/zope.conf demo/setup_demo.py

It can be run again at any time: the root ``session_data_manager`` is
replaced only while it is not ours, and the demo objects are rewritten from
the files beside this script.
"""
import inspect
import os

import transaction


SDM_ID = 'session_data_manager'
SDM_META_TYPE = 'Beaker Session Data Manager'
# zconsole execs this file without setting __file__; the code object knows it.
HERE = os.path.dirname(os.path.abspath(
    inspect.currentframe().f_code.co_filename))

# id -> (source file, title); Python Scripts first, the page uses them.
SCRIPTS = {
    'demo_counter': ('demo_counter.py', 'Count visits in the session'),
    'cart_update': ('cart_update.py', 'Add to or clear the session cart'),
}
PAGES = {
    'index_html': ('front_page.zpt', 'Beaker sessions demo'),
}


def read(name):
    with open(os.path.join(HERE, name), encoding='utf-8') as f:
        return f.read()


def install_session_data_manager(app):
    """Replace the stock session data manager by ours, once, as the ZMI add
    form does with "Replace the existing session_data_manager" ticked."""
    sdm = app._getOb(SDM_ID, None)
    if sdm is not None and sdm.meta_type == SDM_META_TYPE:
        return False
    app.manage_addProduct['BeakerSessionDataManager'] \
        .addBeakerSessionDataManager(SDM_ID, title=SDM_META_TYPE,
                                     replace=True)
    return True


def install_demo_objects(app):
    """(Re)create the demo scripts and the front page from demo/*."""
    existing = [id for id in list(SCRIPTS) + list(PAGES) if id in app]
    if existing:
        # The root index_html of a new Zope is one of them: replace it.
        app.manage_delObjects(existing)
    for id, (filename, title) in SCRIPTS.items():
        app.manage_addProduct['PythonScripts'].manage_addPythonScript(
            id, title=title, file=read(filename))
        errors = app[id].errors
        if errors:
            raise SystemExit(f'{filename}: {errors}')
    for id, (filename, title) in PAGES.items():
        app.manage_addProduct['PageTemplates'].manage_addPageTemplate(
            id, title=title, text=read(filename))


def main(app):
    replaced = install_session_data_manager(app)
    install_demo_objects(app)
    transaction.get().note('Set up the Beaker sessions demo')
    transaction.commit()
    # Closing the database saves the FileStorage index for the server.
    db = app._p_jar.db()
    app._p_jar.close()
    db.close()
    if replaced:
        print(f'Replaced /{SDM_ID} with a {SDM_META_TYPE}.')
    print('Installed the demo page /index_html and its scripts.')


main(app)  # noqa: F821 (``app`` is bound by zconsole)
