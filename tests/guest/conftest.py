"""Tests in tests/guest need IPVS, so they run only inside the test VM (``LVSFW_IN_VM=1``).

The host runs them through ``tests/test_vm_harness.py``; on the host they are skipped here
(and tests/conftest.py keeps host runs from collecting them at all).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

IN_VM = os.environ.get("LVSFW_IN_VM") == "1"


@pytest.fixture(autouse=True)
def _only_in_vm() -> None:
    """Skip every test of this directory outside the VM."""
    if not IN_VM:
        pytest.skip("tests/guest run only inside the VM: pytest -m vm tests/test_vm_harness.py")


def _run(argv: list[str], netns: str = "", stdin: str = "") -> str:
    """Run ``argv`` (inside ``netns`` if given) and return stdout; fail the test on error."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else argv
    proc = subprocess.run(full, input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{full} failed ({proc.returncode}): {proc.stderr.strip()}"
    return proc.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A throwaway network namespace with ``lo`` up, deleted afterwards."""
    for tool in ("ip", "ipvsadm", "nft"):
        assert shutil.which(tool), f"{tool} missing in the guest"
    name = f"lvsfw-t-{uuid.uuid4().hex[:8]}"
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        subprocess.run([shutil.which("ip") or "/usr/sbin/ip", "netns", "del", name], check=False)
