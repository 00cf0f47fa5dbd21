"""Pytest plugin for kernel tests: a throwaway network lab per test.

Enable it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.conftest_kernel"]``.
The lab's namespaces are deleted when the test ends, pass or fail; without root or the tools
the test is skipped, or failed when ``LVSFW_REQUIRE_KERNEL=1``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netlab import Lab, LabError, ensure_kernel, require_kernel


@pytest.fixture
def netlab() -> Iterator[Lab]:
    """A fresh client/director lab (no VIPs yet: ``netlab.add_vips([...])``), deleted after."""
    ensure_kernel()
    lab = Lab()
    try:
        lab.__enter__()
    except (PermissionError, LabError) as exc:
        lab.close()
        require_kernel(f"cannot build the network lab: {exc}")
    try:
        yield lab
    finally:
        lab.close()
