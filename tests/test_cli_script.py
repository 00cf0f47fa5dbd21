"""The real ``lvsfw`` console script (a subprocess) against real kernels in throwaway
namespaces; the newcomer's path through the README; the docs pages and the systemd unit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lvsfw import config
from tests import fake_ipvsadm
from tests.netlab import Lab, Probe, ensure_kernel
from tests.test_cli import DATA, ROOT, _drop_a_mark, bad, invoke, netns, web

__all__ = ["bad", "netns", "web"]  # fixtures shared with tests/test_cli.py

LVSFW = Path(sys.executable).parent / "lvsfw"


def lvsfw(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if not LVSFW.exists():
        pytest.fail(f"{LVSFW} is missing: pip install -e . (setup.cfg's console_scripts)")
    return subprocess.run(
        [str(LVSFW), *args], input=stdin, capture_output=True, text=True, check=False, timeout=120
    )


def test_console_script_without_kernel(web: Path, bad: Path, tmp_path: Path) -> None:
    assert lvsfw("--help").returncode == 0
    assert lvsfw("check", str(web)).returncode == 0
    failed = lvsfw("check", str(bad))
    assert (
        failed.returncode == 1
        and failed.stderr.count("\n") == 1
        and "Traceback" not in failed.stderr
    )
    assert "table inet lvsfw" in lvsfw("render", str(web)).stdout
    assert lvsfw("plan").returncode == 1
    imported = lvsfw("import", str(DATA / "lvs.cf"), "--rules", str(DATA / "iptables-save.txt"))
    assert imported.returncode == 0 and config.loads(imported.stdout).bundles
    unmatched = lvsfw("import", str(DATA / "keepalived.conf"))
    assert unmatched.returncode == 1 and "mark 80" in unmatched.stderr


@pytest.mark.kernel
def test_console_script_every_exit_code(web: Path, netns: str, tmp_path: Path) -> None:
    ensure_kernel()
    ipvsadm = fake_ipvsadm.install(tmp_path / "ipvs")
    flags = [
        "--netns",
        netns,
        "--state-file",
        str(tmp_path / "state.json"),
        "--ipvsadm",
        str(ipvsadm),
        "--lock-dir",
        str(tmp_path),
    ]
    codes: dict[str, Any] = {
        "plan pending": lvsfw("plan", str(web), *flags).returncode,
        "apply refused": lvsfw("apply", str(web), *flags, stdin="").returncode,
        "apply": lvsfw("apply", str(web), *flags, "--yes").returncode,
        "plan clean": lvsfw("plan", str(web), *flags).returncode,
        "verify clean": lvsfw("verify", str(web), *flags).returncode,
        "show": lvsfw("show", *flags).returncode,
        "save": lvsfw("save", str(web), str(tmp_path / "boot"), *flags).returncode,
    }
    _drop_a_mark(netns, "nftables")
    codes["verify drift"] = lvsfw("verify", str(web), *flags).returncode
    live = lvsfw("import", str(DATA / "keepalived.conf"), "--live", "--netns", netns)
    codes["import live"] = live.returncode
    codes["destroy"] = lvsfw("destroy", *flags, "--yes").returncode
    codes["plan error"] = lvsfw("plan", str(web), *flags, "--firewall", "nope").returncode
    assert codes == {
        "plan pending": 2,
        "apply refused": 1,
        "apply": 0,
        "plan clean": 0,
        "verify clean": 0,
        "show": 0,
        "save": 0,
        "verify drift": 3,
        "import live": 1,
        "destroy": 0,
        "plan error": 1,
    }
    assert "mark = 80" in live.stdout and "mark 21" in live.stderr  # 80 recovered, 21 named


README_CONFIG = re.compile(r"cat > web\.toml <<'EOF'\n(.*?)\nEOF\n", re.S)


@pytest.mark.kernel
def test_newcomer_path_from_the_readme(netlab: Lab, tmp_path: Path) -> None:
    """The README's CLI tour, as written, in a namespace: apply, verify 0, real packets marked."""
    found = README_CONFIG.search((ROOT / "README.md").read_text())
    assert found, "README.md lost its five-minute CLI tour (cat > web.toml <<'EOF' ... EOF)"
    path = tmp_path / "web.toml"
    path.write_text(found[1] + "\n")
    netlab.add_vips(["192.0.2.10"])
    flags = [
        "--netns",
        netlab.director,
        "--no-ipvs",
        "--state-file",
        str(tmp_path / "state.json"),
        "--lock-dir",
        str(tmp_path),
    ]
    assert lvsfw("check", str(path)).returncode == 0
    assert lvsfw("plan", str(path), *flags).returncode == 2
    assert lvsfw("apply", str(path), *flags, "--yes").returncode == 0
    verify = lvsfw("verify", str(path), *flags)
    assert (verify.returncode, verify.stdout) == (0, "ok: no drift\n")
    probes = [Probe(4, "tcp", "192.0.2.10", port) for port in (80, 443, 22, 8080)]
    seen = netlab.probe(probes)
    assert {p.port: set(m) for p, m in seen.items()} == {80: {80}, 443: {80}, 22: {0}, 8080: {0}}
    assert lvsfw("destroy", *flags, "--yes").returncode == 0
    seen = netlab.probe(probes)
    assert {p.port: set(m) for p, m in seen.items()} == {80: {0}, 443: {0}, 22: {0}, 8080: {0}}


# -- the docs and examples --------------------------------------------------------------------

DOC_BLOCK = re.compile(
    r"<!-- lvsfw render docs/example\.toml --backend (\S+) -->\n```text\n(.*?)```\n", re.S
)


@pytest.mark.parametrize(
    "page", ["nftables", "iptables-nft", "iptables-legacy", "ipvs", "keepalived"]
)
def test_each_docs_page_shows_exactly_what_lvsfw_loads(page: str) -> None:
    text = (ROOT / "docs" / f"{page}.md").read_text()
    blocks = DOC_BLOCK.findall(text)
    assert [backend for backend, _ in blocks] == [page]
    rendered = invoke("render", str(ROOT / "docs" / "example.toml"), "--backend", page)
    assert rendered.exit_code == 0
    assert blocks[0][1] == rendered.output


def test_the_restore_unit_applies_the_config_at_boot() -> None:
    unit = (ROOT / "examples" / "lvsfw-restore.service").read_text()
    assert "ExecStart=/usr/local/bin/lvsfw apply --yes /etc/lvsfw/lvsfw.toml" in unit
    assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
    assert "Before=network-pre.target keepalived.service" in unit
