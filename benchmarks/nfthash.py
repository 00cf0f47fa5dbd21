"""A prototype nftables layout with O(1) lookups for single ports (benchmark only).

lvsfw's table keeps every element in one ``flags interval`` map per family. A concatenated
interval map is a pipapo set in the kernel, whose lookup ANDs bitmaps with one bit per
element: its per-packet cost grows with N (slowly: N/64 words per field group). This layout
puts single ports in plain hash maps (``nft_set_hash``: O(1)) and only port ranges in the
interval maps, and stops at the first hit::

    meta mark set ip daddr . meta l4proto . th dport map @exact4 accept
    meta mark set ip daddr . meta l4proto . th dport map @range4

Prototype limits: full-mask marks only (masked marks would use verdict maps as lvsfw does).
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.lab import in_ns, run
from lvsfw.enums import Family
from lvsfw.model import Bundle
from lvsfw.rules import MarkRule, specify

TABLE = "lvsfwhash"
_ADDR = {Family.IPV4: ("ip", "ipv4_addr", "4"), Family.IPV6: ("ip6", "ipv6_addr", "6")}


def _element(rule: MarkRule) -> str:
    port = str(rule.first_port)
    port += f"-{rule.last_port}" if rule.last_port != rule.first_port else ""
    return f"{rule.vip} . {rule.protocol} . {port} : {rule.mark:#x}"


def script(rules: frozenset[MarkRule]) -> str:
    """The ``nft -f`` script of the prototype table."""
    blocks, lookups = [], []
    for family, (proto, kind, suffix) in _ADDR.items():
        mine = sorted(r for r in rules if r.family == family)
        for name, interval in ((f"exact{suffix}", False), (f"range{suffix}", True)):
            chosen = [r for r in mine if (r.first_port != r.last_port) == interval]
            body = f"\t\ttype {kind} . inet_proto . inet_service : mark\n"
            body += "\t\tflags interval\n" if interval else ""
            if chosen:
                body += "\t\telements = { " + ",\n\t\t\t".join(map(_element, chosen)) + " }\n"
            blocks.append(f"\tmap {name} {{\n{body}\t}}")
            lookup = f"meta mark set {proto} daddr . meta l4proto . th dport map @{name}"
            lookups.append(lookup + ("" if interval else " accept"))
    hook = "\t\ttype filter hook prerouting priority mangle; policy accept;\n"
    chain = "\tchain prerouting {\n" + hook + "".join(f"\t\t{x}\n" for x in lookups) + "\t}"
    return f"table inet {TABLE} {{\n" + "\n".join([*blocks, chain]) + "\n}\n"


def loader(director: str, bundles: list[Bundle]) -> Callable[[], None]:
    """A pps loader (see :mod:`benchmarks.pps`) for this prototype."""
    run(in_ns(director, "nft", "-f", "-"), stdin=script(specify(bundles).rules))

    def unload() -> None:
        run(in_ns(director, "nft", "delete", "table", "inet", TABLE))

    return unload
