"""``str(Plan)``'s rule lines: the fast path (C-speed sort key, each VIP's text made once)
says exactly what the plain formula over MarkRule's own attrs order says."""

from __future__ import annotations

from hypothesis import given

from lvsfw import Bundle
from lvsfw.model import FULL_MASK
from lvsfw.plan import Plan
from lvsfw.rules import MarkRule, specify
from tests.strategies import bundles


def plain(rule: MarkRule) -> str:
    """The line as the model reads: VIP, protocol:ports, mark (with its mask if narrowed)."""
    ports = str(rule.first_port)
    if rule.last_port != rule.first_port:
        ports += f"-{rule.last_port}"
    mask = "" if rule.mask == FULL_MASK else f"/{hex(rule.mask)}"
    return f"{rule.vip} {rule.protocol.value}:{ports} -> mark {rule.mark}{mask}"


@given(bundles(max_size=8), bundles(max_size=4))
def test_rule_lines_are_the_plain_formula_in_markrule_order(
    want: list[Bundle], have: list[Bundle]
) -> None:
    wanted, held = specify(want).normalized, specify(have).normalized
    lines = str(Plan.between("nftables", held, wanted, frozenset(), frozenset())).splitlines()
    expected = [f"nftables: add {plain(r)}" for r in sorted(wanted - held)]
    expected += [f"nftables: remove {plain(r)}" for r in sorted(held - wanted)]
    assert [line for line in lines if " -> mark " in line] == expected
