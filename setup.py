"""Package metadata for Products.BeakerSessionDataManager."""
import re

from setuptools import find_namespace_packages
from setuptools import setup


REPOSITORY = 'https://github.com/davisagli/Products.BeakerSessionDataManager'
# Where PyPI's page finds the images that README.rst names by their path in
# the repository (docs/screenshots, benchmarks/results).
RAW = ('https://raw.githubusercontent.com/davisagli/'
       'Products.BeakerSessionDataManager/main/')


def read(*names):
    """Return the text of the files ``names``, joined by a blank line, with
    the paths of images made absolute."""
    texts = []
    for name in names:
        with open(name, encoding='utf-8') as f:
            texts.append(re.sub(r'^(\.\. (?:image|figure):: )(?!\w+://)',
                                r'\g<1>' + RAW, f.read(), flags=re.M))
    return '\n\n'.join(texts)


TESTS_REQUIRE = [
    'Products.PythonScripts',
    'Products.TemporaryFolder',
    'WebTest',
    # The last release, still installed on sites moving from 2.x.
    'collective.beaker == 1.0b3',
    'hypothesis',
    'plone.testing',
    # 8.1 brings ``consider_namespace_packages`` for the PEP 420 namespace.
    'pytest >= 8.1',
    # tests/test_browser.py drives Debian's chromium and chromedriver.
    'selenium',
    'zope.pytestlayer',
    'zope.testbrowser',
]

setup(
    name='Products.BeakerSessionDataManager',
    version='3.0.dev0',
    description=(
        'A Zope session data manager that keeps sessions in Beaker stores '
        'instead of the ZODB.'),
    long_description=read('README.rst', 'CHANGES.rst'),
    long_description_content_type='text/x-rst',
    author='Products.BeakerSessionDataManager contributors',
    url=REPOSITORY,
    project_urls={
        'Issue Tracker': REPOSITORY + '/issues',
        'Sources': REPOSITORY,
        'Changelog': REPOSITORY + '/blob/main/CHANGES.rst',
    },
    # PEP 639: an SPDX expression (License-Expression), which supersedes
    # the License :: classifiers.
    license_expression='MIT',
    license_files=['LICENSE.txt'],
    keywords='Zope session Beaker session_data_manager redis memcached',
    classifiers=[
        'Development Status :: 4 - Beta',
        'Environment :: Web Environment',
        'Framework :: Plone',
        'Framework :: Plone :: 6.0',
        'Framework :: Plone :: 6.1',
        'Framework :: Plone :: 6.2',
        'Framework :: Zope',
        'Framework :: Zope :: 5',
        'Framework :: Zope :: 6',
        'Intended Audience :: Developers',
        'Intended Audience :: System Administrators',
        'Operating System :: OS Independent',
        'Programming Language :: Python',
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3 :: Only',
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
        'Programming Language :: Python :: 3.12',
        'Programming Language :: Python :: 3.13',
        'Programming Language :: Python :: Implementation :: CPython',
        'Topic :: Internet :: WWW/HTTP :: Session',
    ],
    # PEP 420: ``Products`` is a namespace without ``__init__.py``.  Listing
    # it makes ``pip install -e .`` put src/ on sys.path, where Zope's product
    # discovery (pkgutil over ``Products.__path__``) finds the product.
    packages=find_namespace_packages(
        'src', include=['Products', 'Products.*'],
        exclude=['*.__pycache__']),
    package_dir={'': 'src'},
    include_package_data=True,
    zip_safe=False,
    python_requires='>=3.10',
    install_requires=[
        'Beaker >= 1.12',
        'Products.Sessions',
        # Abort hooks: an aborted login takes its new session id back.
        'transaction >= 3.0',
        'Zope >= 5.8',
        'zope.component',
        'zope.interface',
    ],
    extras_require={
        'test': TESTS_REQUIRE,
        # The client library of each store (README, "Stores"); redis-py 6
        # is the first whose cluster client takes its number of tries from
        # ``retry`` (RedisClusterStore sets it).
        'redis': ['redis >= 6'],
        # Pure Python; Beaker's ``memcache_module = memcache``.
        'memcached': ['python-memcached'],
        'sqlalchemy': ['SQLAlchemy >= 2.0'],
        'postgresql': ['SQLAlchemy >= 2.0', 'psycopg2-binary'],
        # MySQL and MariaDB (mysql+pymysql://); pure Python.
        'mysql': ['SQLAlchemy >= 2.0', 'PyMySQL'],
        # Beaker prefers it to pycryptodome: authenticated AES-GCM.
        'crypto': ['cryptography'],
        # benchmarks/: load generator, chart, profilers, the memcached
        # sessions the benchmark compares with, and what its instances and
        # tests.servers use.
        'bench': ['aiohttp', 'matplotlib', 'Products.mcdutils',
                  'Products.PythonScripts', 'Products.TemporaryFolder',
                  'py-spy', 'pyinstrument', 'pytest'],
    },
    entry_points={
        'console_scripts': [
            'beaker-sessions = Products.BeakerSessionDataManager.scripts:main',
        ],
    },
)
