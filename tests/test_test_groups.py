"""`make test`'s processes receive the test groups tests/conftest.py sets (pytest-xdist's ``--dist loadgroup``
marks a grouped test's id with ``@group``): when they do not, every test runs on its own and each process
trains the session's demo runs again, with nothing failing but this test."""

import os

import pytest


@pytest.mark.skipif(not os.environ.get("PYTEST_XDIST_WORKER"), reason="only under pytest-xdist (make test)")
def test_this_test_runs_in_its_modules_group(request):
    if not getattr(request.config.option, "loadgroup", False):  # set in the processes by pytest-xdist
        pytest.skip("only under --dist loadgroup (make test)")
    assert request.node.nodeid.endswith("@tests/test_test_groups.py"), request.node.nodeid
