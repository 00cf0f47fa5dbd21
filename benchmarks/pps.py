"""Packets per second through a director: N = 1 versus N = 10,000 bundles, per backend.

A client namespace floods UDP to the probe bundle's VIP (the last bundle of the iptables
chain) through a veth pair, with ``flood.c`` compiled at run time (AF_PACKET, sendmmsg,
qdisc bypassed). The director's veth receive runs in the sender's softirq, so the rate the
sender sustains includes the director's per-packet cost. In the director a table
``inet lvsfwbench`` at priority mangle + 10 counts packets that carry the probe's mark, then
drops everything from the veth (no routing, no ICMP: only classification is measured).

The two directors (N = 1 and N = N) exist side by side and are flooded alternately, so load
from elsewhere on the machine affects both alike. The median and the best run are reported;
the ratio is judged on the best runs (least disturbed by other load on a shared machine).
``nftables-hash*`` is the prototype layout of :mod:`benchmarks.nfthash`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import ipset, nfthash
from benchmarks.apply import Driver
from benchmarks.lab import CLIENT_IF, CLIENT_IP, CLIENT_MAC, DIRECTOR_IF, DIRECTOR_MAC, Lab, in_ns
from benchmarks.lab import run as run_cmd
from benchmarks.workload import PROBE_PORT, probe_index, vip4
from lvsfw.model import Bundle

SOURCE = Path(__file__).with_name("flood.c")
COUNTER_TABLE = "lvsfwbench"
Result = dict[str, Any]
Loader = Callable[[str, list[Bundle]], Callable[[], None]]


def compile_flood(workdir: str) -> str:
    """Build the flood generator with gcc into ``workdir``; its path."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("gcc not found: apt-get install gcc (the pps probe is compiled)")
    binary = os.path.join(workdir, "flood")
    run_cmd([gcc, "-O2", "-Wall", "-o", binary, str(SOURCE)])
    return binary


def counter_table(mark: int) -> str:
    """The director's counting table: packets with ``mark``, then every veth packet dropped."""
    return (
        f"table inet {COUNTER_TABLE} {{\n"
        "\tcounter marked { }\n\tcounter seen { }\n"
        "\tchain count {\n\t\ttype filter hook prerouting priority mangle + 10; policy accept;\n"
        f'\t\tiifname "{DIRECTOR_IF}" meta mark {mark:#x} counter name "marked"\n'
        f'\t\tiifname "{DIRECTOR_IF}" counter name "seen" drop\n\t}}\n}}\n'
    )


def _counters(director: str) -> dict[str, int]:
    text = run_cmd(in_ns(director, "nft", "-j", "list", "counters", "table", "inet", COUNTER_TABLE))
    found = {}
    for item in json.loads(text)["nftables"]:
        counter = item.get("counter")
        if counter:
            found[counter["name"]] = int(counter["packets"])
    return found


def flood_once(flood: str, client: str, director: str, vip: str, seconds: float) -> Result:
    """One flood of ``seconds``: packets sent, and marked/seen at the director, per second."""
    run_cmd(in_ns(director, "nft", "reset", "counters", "table", "inet", COUNTER_TABLE))
    out = run_cmd(in_ns(client, flood, CLIENT_IF, CLIENT_MAC, DIRECTOR_MAC, CLIENT_IP, vip,
                        str(PROBE_PORT), str(seconds)))  # fmt: skip
    sent, elapsed = out.split()
    counts = _counters(director)
    wall = float(elapsed)
    return {
        "sent_pps": int(sent) / wall,
        "marked_pps": counts.get("marked", 0) / wall,
        "seen_pps": counts.get("seen", 0) / wall,
    }


def backend_loader(workdir: str) -> Callable[[str], Loader]:
    """Loaders applying bundles with an lvsfw backend (through the Director when present)."""

    def for_backend(name: str) -> Loader:
        def load(director: str, bundles: list[Bundle]) -> Callable[[], None]:
            driver = Driver(name, director, workdir)
            driver.apply(bundles)
            return driver.destroy

        return load

    return for_backend


def compare(
    lab: Lab, flood: str, label: str, load: Loader, bundles: list[Bundle], *, runs: int,
    seconds: float,
) -> Result:  # fmt: skip
    """Marked packets/s with only the probe bundle vs with all ``bundles``, interleaved."""
    probe = bundles[probe_index(len(bundles))]
    vip = vip4(probe_index(len(bundles)))
    sizes = {"1": [probe], str(len(bundles)): bundles}
    labs: dict[str, tuple[str, str, Callable[[], None]]] = {}
    samples: dict[str, list[Result]] = {size: [] for size in sizes}
    try:
        for size, subset in sizes.items():
            client, director = lab.pair(f"{label[:6]}{size}")
            run_cmd(in_ns(director, "nft", "-f", "-"), stdin=counter_table(probe.mark.value))
            labs[size] = (client, director, load(director, subset))
        for _ in range(runs):
            for size in sizes:
                client, director, _ = labs[size]
                samples[size].append(flood_once(flood, client, director, vip, seconds))
    finally:
        for client, director, cleanup in labs.values():
            try:
                cleanup()
            finally:
                lab.delete(client)
                lab.delete(director)
    out: Result = {"probe": f"udp {vip}:{PROBE_PORT} mark {probe.mark.value}"}
    for size, runs_out in samples.items():
        marked = [r["marked_pps"] for r in runs_out]
        out[size] = {
            "marked_pps": statistics.median(marked),
            "marked_pps_max": max(marked),
            "sent_pps": statistics.median(r["sent_pps"] for r in runs_out),
            "unmarked_pps": statistics.median(r["seen_pps"] - r["marked_pps"] for r in runs_out),
            "runs": runs_out,
        }
    first, last = list(sizes)
    out["ratio_median"] = (
        out[last]["marked_pps"] / out[first]["marked_pps"] if out[first]["marked_pps"] else 0.0
    )
    best = out[first]["marked_pps_max"]
    out["ratio_max"] = out[last]["marked_pps_max"] / best if best else 0.0
    #: Judged on the best run of each: the one least disturbed by other load on the machine.
    out["ratio"] = out["ratio_max"]
    return out


def run_pps(
    lab: Lab, bundles: list[Bundle], backends: tuple[str, ...], *, runs: int, seconds: float,
    with_ipset: bool,
) -> Result:  # fmt: skip
    """The comparison for each backend and (``with_ipset``) each ipset-classified flavour."""
    out: Result = {"seconds_per_run": seconds, "runs": runs}
    with tempfile.TemporaryDirectory(prefix="lvsfwbench-pps-") as workdir:
        flood = compile_flood(workdir)
        loaders = backend_loader(workdir)
        for name in backends:
            out[name] = compare(
                lab, flood, name, loaders(name), bundles, runs=runs, seconds=seconds
            )
        out["nftables-hash*"] = compare(
            lab, flood, "nfthash", nfthash.loader, bundles, runs=runs, seconds=seconds
        )
        if with_ipset:
            for flavour in ("nft", "legacy"):
                label = f"iptables-{flavour}+ipset"
                out[label] = compare(
                    lab,
                    flood,
                    label,
                    ipset.loader(flavour, workdir),
                    bundles,
                    runs=runs,
                    seconds=seconds,
                )
    return out
