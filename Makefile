# Development tasks for Products.BeakerSessionDataManager.
#
#   make run        demo Zope 6 instance on http://127.0.0.1:$(PORT)/ (admin/admin)
#   make test       the test suite on Zope 6, then on Zope 5, then the Plone
#                   suite on Plone 6.2 (versions in constraints-plone.txt)
#   make test-zope6 / make test-zope5 / make test-plone / make lint /
#   make coverage / make clean
#   make test-installed  tests of the sdist installed as a site installs it
#                   (not editable), run from outside the checkout
#   make bench      the benchmark (benchmarks/bench.py; BENCH_ARGS=--quick)
#
# Needs only Python 3 (3.10 or newer) and network access to PyPI.

PYTHON ?= python3
PORT ?= 8080
PYTEST_ARGS ?=
# The Plone run has its own: ``-k redis`` would deselect all its tests.
PLONE_PYTEST_ARGS ?=

STORES := redis,memcached,sqlalchemy,postgresql,mysql,crypto
EXTRAS := test,$(STORES)
ZOPE6 := 'Zope[wsgi] >= 6.0, < 7'
# ZODB 6.3 adds a setting that Zope 5's zope.conf schema rejects.
ZOPE5 := 'Zope[wsgi] >= 5.8, < 6' 'ZODB < 6.3'
PIP_INSTALL := bin/pip install --quiet --disable-pip-version-check

VENV := .venv
VENV5 := .venv-zope5
VENVPLONE := .venv-plone
VENVBENCH := .venv-bench
VENVDEMO := .venv-demo
VENVINSTALLED := .venv-installed
BENCH_ARGS ?=
PLONE := Products.CMFPlone plone.app.testing
PLONE_TESTS := src/Products/BeakerSessionDataManager/tests/plone
INSTANCE := var/demo

.PHONY: all run test test-zope6 test-zope5 test-plone test-installed lint \
    coverage clean clean-demo bench

all: test

# A virtualenv is (re)installed when the packaging files change; the stamp
# file records the last install.
$(VENV)/.installed: setup.py pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/$(PIP_INSTALL) --upgrade pip
	$(VENV)/$(PIP_INSTALL) -e '.[$(EXTRAS)]' $(ZOPE6)
	touch $@

$(VENV5)/.installed: setup.py pyproject.toml
	test -x $(VENV5)/bin/python || $(PYTHON) -m venv $(VENV5)
	$(VENV5)/$(PIP_INSTALL) --upgrade pip
	$(VENV5)/$(PIP_INSTALL) -e '.[$(EXTRAS)]' $(ZOPE5)
	touch $@

# Plone and its Zope come from the pinned set in constraints-plone.txt.
$(VENVPLONE)/.installed: setup.py pyproject.toml constraints-plone.txt
	test -x $(VENVPLONE)/bin/python || $(PYTHON) -m venv $(VENVPLONE)
	$(VENVPLONE)/$(PIP_INSTALL) --upgrade pip
	$(VENVPLONE)/$(PIP_INSTALL) -c constraints-plone.txt -e '.[test]' \
	    $(PLONE)
	touch $@

# The benchmark's own: Zope 6 with the stores, Products.mcdutils and the
# load generator, without the test extra (whose collective.beaker the
# product warns about at start-up).
$(VENVBENCH)/.installed: setup.py pyproject.toml
	test -x $(VENVBENCH)/bin/python || $(PYTHON) -m venv $(VENVBENCH)
	$(VENVBENCH)/$(PIP_INSTALL) --upgrade pip
	$(VENVBENCH)/$(PIP_INSTALL) -e '.[$(STORES),bench]' $(ZOPE6)
	touch $@

# The demo's own: Zope 6 and the product, as a site would install them.
$(VENVDEMO)/.installed: setup.py pyproject.toml
	test -x $(VENVDEMO)/bin/python || $(PYTHON) -m venv $(VENVDEMO)
	$(VENVDEMO)/$(PIP_INSTALL) --upgrade pip
	$(VENVDEMO)/$(PIP_INSTALL) -e . Products.PythonScripts $(ZOPE6)
	touch $@

# --- demo instance --------------------------------------------------------

$(INSTANCE)/etc/zope.conf: | $(VENVDEMO)/.installed
	$(VENVDEMO)/bin/mkwsgiinstance -d $(INSTANCE) -u admin:admin

run: $(VENVDEMO)/.installed $(INSTANCE)/etc/zope.conf
	$(VENVDEMO)/bin/python demo/configure_instance.py $(INSTANCE) $(PORT)
	$(VENVDEMO)/bin/zconsole run $(INSTANCE)/etc/zope.conf demo/setup_demo.py
	@echo
	@echo "  Demo page: http://127.0.0.1:$(PORT)/"
	@echo "  ZMI:       http://127.0.0.1:$(PORT)/manage  (login admin / admin)"
	@echo "  Stop with Ctrl-C."
	@echo
	$(VENVDEMO)/bin/runwsgi $(INSTANCE)/etc/zope.ini

# --- tests ----------------------------------------------------------------

# pytest in the virtualenv $(1), after a line naming its Zope version.
pytest_in = echo "=== Zope $$($(1)/bin/python -c 'import importlib.metadata as m; print(m.version("Zope"))') ($(1)) ===" && $(1)/bin/pytest $(PYTEST_ARGS)

# The Plone suite in $(VENVPLONE), after a line naming Plone and Zope.
pytest_plone = echo "=== Plone $$($(VENVPLONE)/bin/python -c 'import importlib.metadata as m; print(m.version("Products.CMFPlone"), "on Zope", m.version("Zope"))') ($(VENVPLONE)) ===" && $(VENVPLONE)/bin/pytest $(PLONE_PYTEST_ARGS) $(PLONE_TESTS)

# All runs happen even if one fails; the Plone suite runs last, so that on
# success the last line printed is pytest's summary.
test: $(VENV)/.installed $(VENV5)/.installed $(VENVPLONE)/.installed
	@zope6=0; zope5=0; plone=0; \
	$(call pytest_in,$(VENV)) || zope6=$$?; \
	$(call pytest_in,$(VENV5)) || zope5=$$?; \
	$(pytest_plone) || plone=$$?; \
	if [ $$zope6 != 0 ]; then echo "The Zope 6 run failed, see above."; fi; \
	if [ $$zope5 != 0 ]; then echo "The Zope 5 run failed, see above."; fi; \
	[ $$zope6 = 0 ] && [ $$zope5 = 0 ] && [ $$plone = 0 ]

test-zope6: $(VENV)/.installed
	@$(call pytest_in,$(VENV))

test-zope5: $(VENV5)/.installed
	@$(call pytest_in,$(VENV5))

test-plone: $(VENVPLONE)/.installed
	@$(pytest_plone)

# The sdist, built and installed with the stores' extras and Zope 6 in
# $(VENVINSTALLED) (not editable), and the tests inside the package run from
# a directory outside the checkout: files missing from the sdist or the
# wheel pip builds from it, or tests that rely on the checkout, fail here.
# A subset by default; INSTALLED_PYTEST_ARGS='' runs them all.
INSTALLED_PYTEST_ARGS ?= -k 'test_config or test_zmi or test_scripts or test_manager'
test-installed:
	test -x $(VENVINSTALLED)/bin/python || $(PYTHON) -m venv $(VENVINSTALLED)
	$(VENVINSTALLED)/$(PIP_INSTALL) --upgrade pip build
	# A stale SOURCES.txt would add the files it lists to the sdist.
	rm -rf build/sdist src/*.egg-info
	$(VENVINSTALLED)/bin/python -m build --sdist --outdir build/sdist .
	sdist=$$(ls build/sdist/*.tar.gz) && \
	$(VENVINSTALLED)/$(PIP_INSTALL) "$$sdist[$(EXTRAS)]" $(ZOPE6) && \
	$(VENVINSTALLED)/$(PIP_INSTALL) --force-reinstall --no-deps "$$sdist"
	@outside=$$(mktemp -d) && cd $$outside && \
	$(CURDIR)/$(VENVINSTALLED)/bin/pytest -p no:cacheprovider \
	    --pyargs Products.BeakerSessionDataManager.tests \
	    $(INSTALLED_PYTEST_ARGS); \
	status=$$?; rm -rf $$outside; exit $$status

lint: $(VENV)/.installed
	$(VENV)/$(PIP_INSTALL) flake8 isort
	$(VENV)/bin/flake8 src setup.py demo benchmarks
	$(VENV)/bin/isort --check-only --diff src setup.py demo benchmarks

coverage: $(VENV)/.installed
	$(VENV)/$(PIP_INSTALL) pytest-cov
	$(VENV)/bin/pytest --cov --cov-report=term-missing --cov-report=html \
	    --cov-fail-under=95 $(PYTEST_ARGS)

# --- benchmark ------------------------------------------------------------

# Writes benchmarks/results/latest.{json,png,rst}; takes about 30 minutes.
bench: $(VENVBENCH)/.installed
	$(VENVBENCH)/bin/python benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV5) $(VENVPLONE) $(VENVBENCH) $(VENVDEMO) \
	    $(VENVINSTALLED) build dist .tox \
	    .pytest_cache .hypothesis .coverage .coverage.* htmlcov src/*.egg-info
	find src demo -name __pycache__ -type d -prune -exec rm -rf {} +

# The demo instance (its ZODB and sessions) survives `make clean`.
clean-demo:
	rm -rf $(INSTANCE)
