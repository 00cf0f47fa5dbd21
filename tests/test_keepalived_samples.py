"""keepalived's own doc/samples through ``lvsfw import`` (issue 12): the configs admins copy.

Each sample is imported by a fresh ``lvsfw`` process. Asserted: the exit status, the bundles
and health checks carried over, one ``lvsfw:`` line per warning naming ``FILE:LINE``, never a
traceback; and for what is imported, that ``lvsfw check`` accepts it and that its keepalived
render passes the real ``keepalived --config-test`` with no warning (a widened or mangled
import would not).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lvsfw.backends.keepalived import SCRIPT_SECURITY
from tests.netlab import require_kernel

SAMPLES = Path(__file__).parent / "data" / "keepalived-samples"
LVSFW = Path(sys.executable).parent / "lvsfw"
#: sample -> (exit status, bundles imported, bundles with a health check). Exit 1: nothing
#: importable (VRRP-only files; real servers on another port than the service's, which a
#: fwmark service cannot keep; fwmark services whose marks no --rules file sets).
EXPECTED = {
    "keepalived.conf.HTTP_GET.port": (0, 1, 1),
    "keepalived.conf.IPv6": (1, 0, 0),
    "keepalived.conf.PING_CHECK": (0, 1, 0),
    "keepalived.conf.SMTP_CHECK": (0, 1, 0),
    "keepalived.conf.SSL_GET": (0, 2, 2),
    "keepalived.conf.UDP_CHECK": (0, 1, 0),
    "keepalived.conf.conditional_conf": (1, 0, 0),
    "keepalived.conf.fwmark": (1, 0, 0),
    "keepalived.conf.inhibit": (0, 1, 1),
    "keepalived.conf.misc_check": (0, 1, 1),
    "keepalived.conf.misc_check_arg": (0, 1, 1),
    "keepalived.conf.quorum": (1, 0, 0),
    "keepalived.conf.sample": (0, 1, 1),
    "keepalived.conf.status_code": (0, 1, 1),
    "keepalived.conf.track_interface": (1, 0, 0),
    "keepalived.conf.virtual_server_group": (1, 0, 0),
    "keepalived.conf.virtualhost": (0, 1, 1),
    "keepalived.conf.vrrp": (1, 0, 0),
    "keepalived.conf.vrrp.localcheck": (1, 0, 0),
    "keepalived.conf.vrrp.lvs_syncd": (0, 1, 1),
    "keepalived.conf.vrrp.routes": (1, 0, 0),
    "keepalived.conf.vrrp.rules": (1, 0, 0),
    "keepalived.conf.vrrp.scripts": (1, 0, 0),
    "keepalived.conf.vrrp.static_ipaddress": (1, 0, 0),
    "keepalived.conf.vrrp.sync": (1, 0, 0),
}


def lvsfw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LVSFW), *args], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_every_sample_is_listed() -> None:
    assert sorted(p.name for p in SAMPLES.glob("keepalived.conf.*")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_imports_exactly_or_says_why(name: str, tmp_path: Path) -> None:
    done = lvsfw("import", str(SAMPLES / name))
    status, bundles, checked = EXPECTED[name]
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert all(line.startswith("lvsfw: ") for line in lines), lines
    warnings = [line for line in lines if line.startswith("lvsfw: warning: ")]
    assert all(re.search(rf"{re.escape(name)}:\d+", w) for w in warnings), warnings
    assert len(re.findall(r"(?m)^\[\[bundle\]\]", done.stdout)) == bundles
    assert len(re.findall(r"(?m)^(?!#).*\bhealth\b", done.stdout)) >= checked
    if status != 0:
        assert lines  # the reason: a refusal, or marks no rule sets (stubs left as comments)
        return
    config = tmp_path / "imported.toml"
    config.write_text(done.stdout, encoding="utf-8")
    assert lvsfw("check", str(config)).returncode == 0
    rendered = lvsfw("render", str(config), "--backend", "keepalived")
    assert rendered.returncode == 0, rendered.stderr
    binary = shutil.which("keepalived", path="/usr/sbin:/sbin:/usr/bin")
    if binary is None:
        require_kernel("keepalived is not installed (./scripts/bootstrap installs it)")
        pytest.skip("keepalived is not installed")
    conf = tmp_path / "keepalived.conf"
    conf.write_text(SCRIPT_SECURITY + rendered.stdout, encoding="utf-8")
    tested = subprocess.run([binary, "--config-test", "-f", str(conf)], capture_output=True,
                            text=True, timeout=30, check=False)  # fmt: skip
    assert tested.returncode == 0 and not (tested.stdout + tested.stderr).strip(), (
        rendered.stdout + tested.stdout + tested.stderr
    )
