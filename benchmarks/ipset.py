"""A prototype of ipset classification for the iptables backends (benchmark only).

One ``hash:ip,port`` set per family with the ``skbinfo`` extension holds ``VIP,proto:port``
-> ``skbmark MARK/MASK``; lvsfw's chain keeps one rule per family::

    -A LVSFW-PREROUTING -m set --match-set lvsfw4 dst,dst -j SET --map-set lvsfw4 dst,dst --map-mark

so a packet costs one hash lookup whatever the number of bundles. ``hash:ip,port`` stores
single ports: a range is expanded into one entry per port by ipset itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.lab import Lab, in_ns, run
from benchmarks.workload import with_one_change
from lvsfw.enums import Family
from lvsfw.model import Bundle
from lvsfw.rules import MarkRule, specify

SETS = {Family.IPV4: ("lvsfw4", "inet", "iptables"), Family.IPV6: ("lvsfw6", "inet6", "ip6tables")}
CHAIN = "LVSFW-PREROUTING"


def entry(rule: MarkRule) -> str:
    """The ``add`` line of one rule (a range stays a range: ipset expands it)."""
    name = SETS[rule.family][0]
    port = str(rule.first_port)
    port += f"-{rule.last_port}" if rule.last_port != rule.first_port else ""
    return f"add {name} {rule.vip},{rule.protocol}:{port} skbmark {rule.mark:#x}/{rule.mask:#x}"


def entries(rules: frozenset[MarkRule]) -> int:
    """How many set members ``rules`` become (ranges expanded)."""
    return sum(r.last_port - r.first_port + 1 for r in rules)


def restore_text(rules: frozenset[MarkRule]) -> str:
    """``ipset restore`` input creating both sets and filling them."""
    size = max(1024, 1 << max(entries(rules) - 1, 1).bit_length())
    lines = [
        f"create {name} hash:ip,port family {family} skbinfo hashsize {size} maxelem {size * 4}"
        for name, family, _ in SETS.values()
    ]
    lines += [entry(r) for r in sorted(rules)]
    return "\n".join(lines) + "\n"


def chain_text(family: Family) -> str:
    """``iptables-restore --noflush`` input: the own chain as one set lookup, and the jump."""
    name = SETS[family][0]
    return (
        f"*mangle\n:{CHAIN} - [0:0]\n"
        f"-A {CHAIN} -m set --match-set {name} dst,dst -j SET --map-set {name} dst,dst --map-mark\n"
        f"-A PREROUTING -j {CHAIN}\nCOMMIT\n"
    )


def load(director: str, flavour: str, bundles: list[Bundle]) -> float:
    """Load ``bundles`` as sets + two rules; the seconds it took (ipset, then each family)."""
    rules = specify(bundles).rules
    start = time.perf_counter()
    run(in_ns(director, "ipset", "restore"), stdin=restore_text(rules))
    for family, (_, _, tool) in SETS.items():
        run(in_ns(director, f"{tool}-{flavour}-restore", "--noflush"), stdin=chain_text(family))
    return time.perf_counter() - start


def unload(director: str, flavour: str) -> None:
    """Remove the jump, the chain and the sets."""
    for _, _, tool in SETS.values():
        text = f"*mangle\n-D PREROUTING -j {CHAIN}\n-F {CHAIN}\n-X {CHAIN}\nCOMMIT\n"
        run(in_ns(director, f"{tool}-{flavour}-restore", "--noflush"), stdin=text)
    for name, _, _ in SETS.values():
        run(in_ns(director, "ipset", "destroy", name))


def loader(flavour: str, workdir: str) -> Callable[[str, list[Bundle]], Callable[[], None]]:
    """A pps loader (see :mod:`benchmarks.pps`) for this prototype."""

    def load_bundles(director: str, bundles: list[Bundle]) -> Callable[[], None]:
        load(director, flavour, bundles)
        return lambda: unload(director, flavour)

    return load_bundles


def measure(lab: Lab, flavour: str, bundles: list[Bundle]) -> dict[str, Any]:
    """Cold load, one change (``ipset add`` of the changed bundle's new member) and a save."""
    rules = specify(bundles).rules
    ns = lab.namespace(f"ipset{flavour}{len(bundles)}")
    try:
        cold = load(ns, flavour, bundles)
        index = len(bundles) // 2
        new = specify(with_one_change(bundles, index)).rules - rules
        start = time.perf_counter()
        run(in_ns(ns, "ipset", "restore"), stdin="".join(entry(r) + "\n" for r in sorted(new)))
        incremental = time.perf_counter() - start
        start = time.perf_counter()
        run(in_ns(ns, "ipset", "save"))
        saved = time.perf_counter() - start
        unload(ns, flavour)
    finally:
        lab.delete(ns)
    return {
        "cold_s": cold,
        "members": entries(rules),
        "incremental_s": incremental,
        "incremental_members": entries(frozenset(new)),
        "save_s": saved,
    }
