"""`--all-applications`: every Keras application in every application test.

The suite's default run (the README's test command, CI) checks each application test on the networks
that together cover every op the applications export; a network whose ops another one already brings
(MobileNetV3Large's are MobileNetV3Small's, say) is marked `all_applications` and runs only with
this option. The benchmarks (benchmarks/applications.py, executor.py, espdl_check.py --applications)
run every network too.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption("--all-applications", action="store_true",
                     help="also run the application cases that the default run leaves to the benchmarks")


def pytest_configure(config):
    config.addinivalue_line("markers", "all_applications: an application case run only with --all-applications")


@pytest.fixture
def all_applications(request):
    """Whether this run was given --all-applications."""
    return request.config.getoption("--all-applications")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--all-applications"):
        return
    skip = pytest.mark.skip(reason="its ops are covered by the other networks; run with --all-applications")
    for item in items:
        if "all_applications" in item.keywords:
            item.add_marker(skip)
