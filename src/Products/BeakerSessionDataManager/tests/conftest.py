"""pytest hooks for the test suite."""
import sys


HOSTILE_COOKIES = (
    'Products.BeakerSessionDataManager.tests.test_hostile_cookies')


def pytest_terminal_summary(terminalreporter):
    """Say how many hostile cookies were tried (test_hostile_cookies)."""
    module = sys.modules.get(HOSTILE_COOKIES)
    if module is not None and module.TALLY['tried']:
        terminalreporter.write_line(
            'hostile cookies tried: %(tried)d, server errors: '
            '%(server errors)d' % module.TALLY)
