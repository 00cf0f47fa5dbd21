"""Host side of the IPVS tests: boot one VM with an IPVS kernel and run tests/guest in it.

Skipped where the VM cannot run (not root, no QEMU), except under ``LVSFW_REQUIRE_KERNEL=1``,
where that is a failure. ``LVSFW_VM_TIMEOUT`` overrides the suite's timeout (default 1200 s).
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest` puts tests/, not the repository, on sys.path
    sys.path.insert(0, str(REPO))

from tests.vm import (  # noqa: E402
    TIMEOUT_STATUS,
    VmSetupError,
    prepare,
    run_in_vm,
    unavailable_reason,
)
from tests.vm.initramfs import GUEST_RESULTS  # noqa: E402

pytestmark = pytest.mark.vm

REQUIRE = os.environ.get("LVSFW_REQUIRE_KERNEL") == "1"


def _need_vm() -> None:
    """Skip (fail under LVSFW_REQUIRE_KERNEL=1) unless the VM can run here."""
    reason = unavailable_reason()
    if reason is None:
        try:
            prepare()
        except VmSetupError as exc:
            reason = f"cannot prepare the VM: {exc}"
    if reason is not None:
        if REQUIRE:
            pytest.fail(f"LVSFW_REQUIRE_KERNEL=1 but {reason}")
        pytest.skip(reason)


def _junit_counts(path: Path) -> dict[str, int]:
    """Sum tests/failures/errors/skipped over the testsuites of a JUnit XML file."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    root = ET.parse(path).getroot()  # noqa: S314 - written by our own guest
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, "0"))
    return counts


def _summary(output: str) -> str:
    """The guest pytest's final summary line(s) and the harness's own lines."""
    keep = [
        line for line in output.splitlines()
        if line.startswith("lvsfw-vm:") or " passed" in line or " failed" in line
        or " error" in line or " skipped" in line or "no tests ran" in line
    ]
    return "\n".join(keep[-12:])


def test_ipvs_suite_in_vm(tmp_path: Path) -> None:
    """``pytest tests/guest`` in one VM must pass, run tests and (if required) skip none."""
    _need_vm()
    timeout = float(os.environ.get("LVSFW_VM_TIMEOUT", "1200"))
    argv = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/guest",
        f"--junitxml={GUEST_RESULTS}/junit.xml",
    ]
    result = run_in_vm(argv, timeout=timeout, cwd=REPO, results_dir=tmp_path)
    print(_summary(result.output))
    assert not result.timed_out, f"VM timed out after {timeout:g}s:\n{result.output[-4000:]}"
    tail = result.output[-8000:]
    assert result.returncode == 0, f"guest pytest exit {result.returncode}:\n{tail}"
    junit = tmp_path / "junit.xml"
    assert junit.is_file(), "the guest wrote no junit.xml"
    counts = _junit_counts(junit)
    print(f"lvsfw-vm: guest junit: {counts}")
    assert counts["tests"] > 0, "no tests ran in the VM"
    assert counts["failures"] == 0 and counts["errors"] == 0, counts
    if REQUIRE:
        assert counts["skipped"] == 0, f"LVSFW_REQUIRE_KERNEL=1 but guest tests skipped: {counts}"


def test_hung_guest_command_is_killed(tmp_path: Path) -> None:
    """A guest command that never ends is killed at the timeout and reported as failure (124).

    Costs one boot plus the timeout (about 30 s under TCG).
    """
    _need_vm()
    result = run_in_vm(["sleep", "1000"], timeout=30, cwd=REPO, results_dir=tmp_path, stream=None)
    assert result.timed_out
    assert result.returncode == TIMEOUT_STATUS
    assert "TIMEOUT" in result.output
    assert not (tmp_path / "exit-status").exists()
