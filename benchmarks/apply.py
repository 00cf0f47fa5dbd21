"""Cold apply (next to the kernel tools' floor and the naive way), incremental apply, verify.

Each backend gets its own fresh director namespace per N; the floors load the same ruleset,
rendered by the same backend, into another fresh namespace with the kernel tool itself.
"""

from __future__ import annotations

import functools
import importlib
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from benchmarks.lab import Lab, in_ns, timed
from benchmarks.record import recording
from benchmarks.workload import make_bundles, with_one_change
from lvsfw import registry
from lvsfw.backends.base import PacketFilter
from lvsfw.enums import Family
from lvsfw.model import Bundle
from lvsfw.rules import Specification, normalize, specify

T = TypeVar("T")
PACKET_FILTERS = ("nftables", "iptables-nft", "iptables-legacy")
Result = dict[str, Any]


def clock(work: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of ``work()``."""
    start = time.perf_counter()
    value = work()
    return time.perf_counter() - start, value


class Driver:
    """Apply and verify through ``lvsfw.director.Director`` (ipvs=False) when it exists,
    else through the packet-filter backend directly (``apply(specify(bundles))``, ``read()``)."""

    def __init__(self, firewall: str, netns: str, workdir: str) -> None:
        try:
            director_cls: Any = importlib.import_module("lvsfw.director").Director
        except ImportError:
            director_cls = None
        self.director: Any = None
        if director_cls is not None:
            self.director = director_cls(
                firewall=firewall,
                ipvs=False,
                netns=netns,
                state_file=os.path.join(workdir, f"state-{netns}.json"),
                lock_dir=workdir,
            )
            self.backend: PacketFilter = self.director.firewall
        else:
            backend = registry.get(firewall)(netns=netns)
            assert isinstance(backend, PacketFilter)
            self.backend = backend
        self.via = "director" if self.director is not None else "backend"

    def apply(self, bundles: list[Bundle]) -> None:
        """Make the namespace's marks equal ``bundles``."""
        if self.director is not None:
            self.director.apply(bundles)
        else:
            self.backend.apply(specify(bundles))

    def verify(self, bundles: list[Bundle]) -> bool:
        """Whether the live marks equal ``bundles`` (Director.verify's report, or read())."""
        if self.director is not None:
            return bool(self.director.verify(bundles).ok)
        return normalize(self.backend.read()) == normalize(specify(bundles).rules)

    def destroy(self) -> None:
        """Remove everything lvsfw owns in the namespace."""
        if self.director is not None:
            self.director.destroy()
        else:
            self.backend.remove()


def _file(workdir: str, name: str, text: str) -> str:
    path = os.path.join(workdir, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def floor(lab: Lab, name: str, spec: Specification, workdir: str) -> Result:
    """The kernel tool loading ``spec`` as rendered by backend ``name``, in a fresh namespace;
    and the tool's own listing of it (the read floor)."""
    backend = registry.get(name)()
    ns = lab.namespace("floor")
    try:
        if name == "nftables":
            path = _file(workdir, "floor.nft", backend.render_spec(spec))
            load = timed(in_ns(ns, "nft", "-f", path))
            listing = timed(in_ns(ns, "nft", "list", "table", "inet", "lvsfw"))
            return {"tool": "nft -f", "load_s": load, "list_s": listing}
        binaries: dict[Family, tuple[str, str]] = getattr(backend, "binaries")  # noqa: B009
        family_text: Callable[[Specification, Family], str] = getattr(backend, "family_text")  # noqa: B009
        ipset_text: Callable[[Specification], str] = getattr(backend, "ipset_text")  # noqa: B009
        load = listing = 0.0
        sets = ipset_text(spec)
        if sets:  # the sets first: the rules name them
            path = _file(workdir, "floor.ipset", sets)
            load += timed(in_ns(ns, "ipset", "-exist", "restore", "-file", path))
            listing += timed(in_ns(ns, "ipset", "save"))
        for family in Family:
            if any(r.family == family for r in spec.rules):
                restore, save = binaries[family]
                path = _file(workdir, f"floor-{family.value}.rules", family_text(spec, family))
                load += timed(in_ns(ns, restore, "--noflush", path))
                listing += timed(in_ns(ns, save, "-t", "mangle"))
        tool = "ipset restore + iptables-restore --noflush (ip + ip6)"
        return {"tool": tool, "load_s": load, "list_s": listing}
    finally:
        lab.delete(ns)


def naive_script(spec: Specification, flavour: str) -> str:
    """The seed documentation's way: one ``iptables -t mangle -A PREROUTING ... -j MARK`` per
    port or range, IPv6 through ip6tables, as a shell script."""
    lines = ["set -e"]
    for rule in sorted(spec.rules):
        tool = f"{'ip' if rule.family == Family.IPV4 else 'ip6'}tables-{flavour}"
        port = str(rule.first_port)
        port += f":{rule.last_port}" if rule.last_port != rule.first_port else ""
        lines.append(
            f"{tool} -w -t mangle -A PREROUTING -d {rule.vip} -p {rule.protocol} --dport {port}"
            f" -j MARK --set-mark {rule.mark:#x}/{rule.mask:#x}"
        )
    return "\n".join(lines) + "\n"


def naive(lab: Lab, spec: Specification, flavour: str, workdir: str) -> Result:
    """Time the naive script (one process per rule) in a fresh namespace."""
    ns = lab.namespace("naive")
    try:
        path = _file(workdir, f"naive-{flavour}.sh", naive_script(spec, flavour))
        return {"flavour": flavour, "processes": len(spec.rules), "s": timed(in_ns(ns, "sh", path))}
    finally:
        lab.delete(ns)


def measure(lab: Lab, name: str, bundles: list[Bundle], workdir: str, repeat: int) -> Result:
    """Cold, no-op and one-change apply, verify and read of backend ``name`` at len(bundles)."""
    n = len(bundles)
    ns = lab.namespace(f"{name.rsplit('-', maxsplit=1)[-1]}{n}")
    try:
        driver = Driver(name, ns, workdir)
        colds = []
        for attempt in range(repeat):
            if attempt:
                driver.destroy()
            with recording() as log:
                seconds, _ = clock(lambda: driver.apply(bundles))
            colds.append(seconds)
        noop_s, _ = clock(lambda: driver.apply(bundles))
        changed = with_one_change(bundles, n // 2)
        with recording() as incr_log:
            incr_s, _ = clock(lambda: driver.apply(changed))
        fresh_s = []  # one change again, every bundle built afresh (what a reload produces)
        for again in (make_bundles(n), with_one_change(make_bundles(n), n // 2)):
            seconds, _ = clock(functools.partial(driver.apply, again))
            fresh_s.append(seconds)
        verify_s, ok = clock(lambda: driver.verify(changed))
        read_s, rules = clock(driver.backend.read)
        nft_tx = getattr(driver.backend, "last_transaction", None)
        driver.destroy()
    finally:
        lab.delete(ns)
    return {
        "via": driver.via,
        "cold_s": min(colds),
        "cold_runs_s": colds,
        "cold_calls": log.summary(),
        "noop_s": noop_s,
        "incremental_s": incr_s,
        "incremental_calls": incr_log.summary(),
        "fresh_change_s": min(fresh_s),
        "fresh_change_runs_s": fresh_s,
        "incremental_nft_commands": len(nft_tx["nftables"]) if isinstance(nft_tx, dict) else None,
        "verify_s": verify_s,
        "verify_ok": ok,
        "read_s": read_s,
        "read_rules": len(rules),
        "changed_rules": len(specify(changed).rules),
    }


NAIVE_FLAVOUR = {"nftables": "nft", "iptables-nft": "nft", "iptables-legacy": "legacy"}


def run_apply(
    lab: Lab, bundles: list[Bundle], backends: tuple[str, ...], naive_max: int, repeat: int
) -> Result:
    """Every apply measurement of one N, per backend, plus floors and (small N) naive.

    The naive way runs once per iptables flavour; nftables is compared with the nft flavour
    (both program nf_tables), each iptables backend with its own flavour.
    """
    spec = specify(bundles)
    out: Result = {"rules": len(spec.rules)}
    with tempfile.TemporaryDirectory(prefix="lvsfwbench-") as workdir:
        naives: dict[str, Result] = {}
        if len(bundles) <= naive_max:
            for flavour in sorted({NAIVE_FLAVOUR[name] for name in backends}):
                naives[flavour] = naive(lab, spec, flavour, workdir)
        out["naive"] = naives
        for name in backends:
            result = measure(lab, name, bundles, workdir, repeat)
            floors = [floor(lab, name, spec, workdir) for _ in range(repeat)]
            best = min(floors, key=lambda f: float(f["load_s"]))
            result["floor"] = best
            result["cold_vs_floor"] = result["cold_s"] / best["load_s"]
            result["verify_floor_s"] = best["list_s"]
            flavour = NAIVE_FLAVOUR[name]
            if flavour in naives:
                result["naive_s"] = naives[flavour]["s"]
                result["naive_vs_cold"] = naives[flavour]["s"] / result["cold_s"]
            out[name] = result
    return out
