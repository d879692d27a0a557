"""Collect the Plone suite only where Plone is installed.

``make test-plone`` runs it in ``.venv-plone``; the plain Zope runs skip
this directory.
"""
import importlib.util


if importlib.util.find_spec('Products.CMFPlone') is None:
    collect_ignore_glob = ['test_*.py']
