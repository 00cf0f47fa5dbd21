"""The scale benchmark at N = 10, so it cannot rot: every section present, every number > 0
(the command-line section of fresh ``lvsfw`` processes included)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.netlab import kernel_problem, require_kernel, xtables_tools

pytestmark = pytest.mark.kernel

BACKENDS = ("nftables", "iptables-nft", "iptables-legacy")
RENDERERS = (*BACKENDS, "ipvs", "keepalived")
CLI_STEPS = ("plan_cold", "apply_cold", "apply_noop", "plan_change", "apply_change", "verify")


def _positive(value: Any, where: str) -> None:
    assert isinstance(value, (int, float)) and value > 0, f"{where}: {value!r}"


def test_benchmark_smoke(tmp_path: Path) -> None:
    tools = ("gcc", "ipset", *xtables_tools("nft"), *xtables_tools("legacy"))
    problem = kernel_problem(tools)
    if problem:
        require_kernel(problem)
    from benchmarks.__main__ import main

    out = tmp_path / "smoke.json"
    argv = ["--sizes", "10", "--cli-sizes", "10", "--repeat", "1", "--pps-runs", "1",
            "--pps-seconds", "0.2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(out.read_text())
    section = results["sizes"]["10"]
    for name in RENDERERS:
        _positive(section["render"][name]["render_s"], f"render {name}")
    apply = section["apply"]
    for name in BACKENDS:
        r = apply[name]
        for key in ("cold_s", "noop_s", "incremental_s", "verify_s", "read_s", "naive_s"):
            _positive(r[key], f"{name} {key}")
        _positive(r["floor"]["load_s"], f"{name} floor")
        assert r["verify_ok"], name
        assert r["read_rules"] == r["changed_rules"] == apply["rules"] + 1, name
        assert r["incremental_calls"]["writes"] >= 1, name
        _positive(r["fresh_change_s"], f"{name} fresh_change_s")
    for flavour in ("nft", "legacy"):
        _positive(section["ipset"][flavour]["cold_s"], f"ipset {flavour}")
    for name in (*BACKENDS, "iptables-nft+ipset", "iptables-legacy+ipset"):
        pps = results["pps"][name]
        _positive(pps["1"]["marked_pps"], f"pps {name} N=1")
        _positive(pps["10"]["marked_pps"], f"pps {name} N=10")
        _positive(pps["ratio"], f"pps {name} ratio")
    for name in BACKENDS:
        _positive(results["memory"][name]["maxrss_mib"], f"memory {name}")
    cli = results["cli"]["sizes"]["10"]
    _positive(cli["check"]["s"], "cli check")
    for name in BACKENDS:
        for step in CLI_STEPS:
            _positive(cli[name][step]["s"], f"cli {name} {step}")
            if cli[name][step]["maxrss_mib"] is not None:  # None: no GNU time here
                _positive(cli[name][step]["maxrss_mib"], f"cli {name} {step} memory")
        assert cli[name]["plan_cold"]["rc"] == 2, name  # something to add: exit 2
        _positive(cli[name]["floor"]["load_s"], f"cli {name} floor")
    assert any(f["floor"].startswith("CLI ") for f in results["floors"]), "no CLI floor"
    assert results["floors"], "no floor judged"
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith("lvsfwbench-")]
