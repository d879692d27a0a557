"""Integration tests on a Plone 6 site (``make test-plone``)."""
