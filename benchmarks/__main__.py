"""``python -m benchmarks [--sizes 10,1000,10000] [--out benchmarks/results/latest.json]``.

Runs every measurement of issue 5 in throwaway network namespaces (root needed), prints a
table and writes the JSON. ``--help`` lists the knobs; the defaults are the full run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import ipset, parse
from benchmarks.apply import PACKET_FILTERS, run_apply
from benchmarks.cli import run_cli
from benchmarks.lab import ENV, Lab, exec_overhead, require_root
from benchmarks.pps import run_pps
from benchmarks.render import run_render
from benchmarks.report import floors, table
from benchmarks.workload import make_bundles

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).with_name("results") / "latest.json"
VERSION_COMMANDS = {
    "nft": ["nft", "--version"],
    "iptables-nft": ["iptables-nft", "--version"],
    "iptables-legacy": ["iptables-legacy", "--version"],
    "ipset": ["ipset", "version"],
    "gcc": ["gcc", "--version"],
}


def _output(argv: list[str], lines: int = 1) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=ENV, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return "; ".join((done.stdout or done.stderr).strip().splitlines()[:lines])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    pattern = "^(Model name|CPU\\(s\\)|Thread|Hypervisor|L2|L3)"
    lscpu = _output(["sh", "-c", f"lscpu | grep -E '{pattern}' | tr -s ' '"], lines=8)
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": lscpu,
        "loadavg_at_start": os.getloadavg(),
        "tools": {name: _output(argv) for name, argv in VERSION_COMMANDS.items()},
        "lvsfw_commit": _output(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
        "ipvs": "not measured: this kernel has no IPVS; packet-filter half only (ipvs=False)",
    }


def _memory(lab: Lab, backends: tuple[str, ...], count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lvsfwbench-mem-") as workdir:
        for name in backends:
            ns = lab.namespace(f"mem{name.split('-')[-1]}")
            try:
                text = subprocess.run(
                    [sys.executable, "-m", "benchmarks.memory", name, str(count), ns, workdir],
                    capture_output=True, text=True, check=True,
                    cwd=ROOT,
                ).stdout  # fmt: skip
                out[name] = json.loads(text)
            finally:
                lab.delete(ns)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--sizes", default="10,1000,10000", help="numbers of bundles")
    p.add_argument("--backends", default=",".join(PACKET_FILTERS), help="packet filters")
    p.add_argument("--naive-max", type=int, default=1000, help="largest N timed the naive way")
    p.add_argument("--repeat", type=int, default=3, help="best of this many cold applies (N<=1000)")
    p.add_argument("--pps-runs", type=int, default=5, help="floods per (backend, N)")
    p.add_argument("--pps-seconds", type=float, default=1.0, help="length of one flood")
    p.add_argument("--no-pps", action="store_true", help="skip packets per second")
    p.add_argument("--no-ipset", action="store_true", help="skip the ipset prototype")
    p.add_argument("--no-memory", action="store_true", help="skip peak memory")
    p.add_argument("--no-import", action="store_true", help="skip lvsfw import --rules")
    p.add_argument("--cli-sizes", help="N of the command-line section (default: --sizes >= 1000)")
    p.add_argument("--no-cli", action="store_true", help="skip the command-line section")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    """Run the benchmark; 2 when it cannot run here (not root)."""
    args = parse_args(argv)
    problem = require_root()
    if problem:
        print(f"benchmarks: {problem}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = tuple(b for b in args.backends.split(",") if b)
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "sizes": {}}
    with Lab() as lab:
        results["machine"]["netns_exec_s"] = exec_overhead(lab)
        for count in sizes:
            bundles = make_bundles(count)
            repeat = args.repeat if count <= 1000 else 1
            print(f"N={count}: render, apply, verify ...", file=sys.stderr, flush=True)
            section: dict[str, Any] = {"render": run_render(bundles, repeat)}
            section["apply"] = run_apply(lab, bundles, backends, args.naive_max, repeat)
            if not args.no_ipset:
                flavours = [b.split("-")[1] for b in backends if b.startswith("iptables-")]
                section["ipset"] = {f: ipset.measure(lab, f, bundles) for f in flavours}
            if not args.no_import:
                section["import"] = parse.time_import(count)
            results["sizes"][str(count)] = section
        if not args.no_cli:
            given = args.cli_sizes.split(",") if args.cli_sizes else None
            cli_sizes = [int(s) for s in given] if given else [n for n in sizes if n >= 1000]
            results["cli"] = run_cli(lab, cli_sizes or sizes, backends, args.repeat)
        big = max(sizes)
        if not args.no_pps:
            print(f"packets/s: N=1 vs N={big} ...", file=sys.stderr, flush=True)
            results["pps"] = run_pps(
                lab, make_bundles(big), backends, runs=args.pps_runs,
                seconds=args.pps_seconds, with_ipset=not args.no_ipset,
            )  # fmt: skip
        if not args.no_memory:
            print(f"peak memory of apply at N={big} ...", file=sys.stderr, flush=True)
            results["memory"] = _memory(lab, backends, big)
    results["floors"] = floors(results)
    results["elapsed_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\n{results['elapsed_s']:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
