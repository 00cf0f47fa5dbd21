"""Foreign re-marks: rules a packet meets after lvsfw marked it that set the mark again.

lvsfw marks in the prerouting hook at the mangle priority (-150): nftables in the base chain of
table ``inet lvsfw``, iptables in its chain jumped to from mangle ``PREROUTING`` (x_tables and
iptables-nft both hook there at -150). What runs later in the same hook can override that mark:

* iptables (:func:`xt_overrides`): a ``PREROUTING`` rule after lvsfw's jump, and every rule of
  the foreign user chains such a rule jumps (``-j``) or goes (``-g``) to, recursively, that
  sets the mark (``MARK``; ``CONNMARK --restore-mark``; ``SET --map-mark``; ``TPROXY`` with a
  mark). Before lvsfw's jump, an ``ACCEPT``, ``DROP`` or ``RETURN`` in ``PREROUTING`` itself
  skips lvsfw's marks (what chains before the jump mark is overridden by lvsfw's).
* nf_tables (:func:`nft_overrides`): every base chain on the prerouting hook at the mangle
  priority or later, in any table but the skipped ones (lvsfw's own; iptables-nft's mangle,
  which the iptables reading inspects), and every chain it jumps or goes to, directly or
  through a verdict map, recursively: a rule setting ``meta mark``. Chains at an earlier
  priority or in other hooks are never reported (lvsfw's mark comes after them).

Each chain is walked once per starting rule (a cycle guard); nothing proves which packets a
foreign rule matches, so any mark-setting rule reachable there is reported. Every detail starts
with ``foreign``: drift of kind ``override``, reported and never "repaired" (the Director leaves
foreign chains alone).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

from lvsfw.backends.base import Finding
from lvsfw.command import run
from lvsfw.enums import Family
from lvsfw.errors import BackendUnavailable, CommandFailed

#: The priority lvsfw marks at in the prerouting hook (mangle): later chains can override it.
MANGLE_PRIORITY = -150
#: iptables-nft's own tables the iptables reading inspects already, and lvsfw's nft table.
COMPAT_TABLES = frozenset({("ip", "mangle"), ("ip6", "mangle"), ("inet", "lvsfw")})
#: The nf_tables families whose prerouting hook is the IP one lvsfw marks in.
_NFT_FAMILIES: dict[str, Optional[Family]] = {"ip": Family.IPV4, "ip6": Family.IPV6, "inet": None}
_SKIPPING = frozenset({"ACCEPT", "DROP", "RETURN"})
#: An nft listing command as ``nft -j`` words, e.g. ``("list", "chain", "inet", "t", "c")``.
Words = tuple[str, ...]
#: Reads one listing (``nft -j`` words) and returns its ``nftables`` items.
Reader = Callable[[Words], list[Any]]

# -- iptables ------------------------------------------------------------------------------


def _target(words: list[str]) -> tuple[str, str]:
    """(``-j`` or ``-g``, target) of a rule's words; ("", "") without one."""
    for index, word in enumerate(words[:-1]):
        if word in {"-j", "--jump"}:
            return "-j", words[index + 1]
        if word in {"-g", "--goto"}:
            return "-g", words[index + 1]
    return "", ""


def xt_sets_mark(words: list[str]) -> bool:
    """Whether an iptables rule (its words) sets the packet's mark."""
    target = _target(words)[1]
    if target == "MARK":
        return True
    if target == "CONNMARK":  # --set-mark/--save-mark change the conntrack mark only
        return "--restore-mark" in words
    if target == "SET":
        return "--map-mark" in words
    if target == "TPROXY" and "--tproxy-mark" in words[:-1]:
        return words[words.index("--tproxy-mark") + 1] not in {"0x0/0x0", "0/0"}
    return False


def _chains(lines: Iterable[str]) -> dict[str, list[str]]:
    """``-A NAME ...`` lines by chain name, in order."""
    chains: dict[str, list[str]] = {}
    for line in lines:
        words = line.split()
        chains.setdefault(words[1], []).append(line)
    return chains


def _narrowing(words: list[str]) -> list[str]:
    """``words`` without negated options (``! -d X`` does not narrow to X)."""
    kept, skip = [], 0
    for word in words:
        if skip:
            skip -= 1
        elif word == "!":
            skip = 2
        else:
            kept.append(word)
    return kept


def _walk(
    name: str, chains: dict[str, list[str]], own: str, seen: set[str]
) -> Iterator[tuple[tuple[str, ...], str]]:
    """(the jump or goto lines passed through, line) of every rule reachable from chain
    ``name``: its rules and those of the user chains they jump or go to, each chain once
    (``seen``: the cycle guard); never lvsfw's chain ``own``."""
    if name in seen or name == own:
        return
    seen.add(name)
    for line in chains.get(name, ()):
        yield (), line
        target = _target(line.split())[1]
        if target in chains:
            for via, inner in _walk(target, chains, own, seen):
                yield (line, *via), inner


def _reached(
    top: str, chains: dict[str, list[str]], own: str, hit: Callable[[list[str]], bool], what: str
) -> list[tuple[str, list[str]]]:
    """(detail, words) of each rule ``hit`` selects among those the PREROUTING rule ``top``
    reaches through user chains; the words of every rule on the way narrow the finding."""
    found = []
    target = _target(top.split())[1]
    for via, inner in _walk(target, chains, own, set()) if target in chains else ():
        words = inner.split()
        if hit(words):
            detail = f"foreign chain {words[1]} {what} (reached by: {top}): {inner}"
            narrow = words + [w for line in reversed(via) for w in line.split()] + top.split()
            found.append((detail, _narrowing(narrow)))
    return found


def xt_overrides(
    before: Iterable[str], after: Iterable[str], others: Iterable[str], own: str
) -> list[tuple[str, list[str]]]:
    """(detail, words to narrow it by) of the foreign rules that skip or override lvsfw's
    marks: ``before``/``after`` its jump in ``PREROUTING``, ``others`` the lines of every
    other mangle chain (what rules after the jump may jump or go to), ``own`` lvsfw's chain.

    Only ``PREROUTING``'s own verdicts count as skips: a chain it jumps to before lvsfw's
    jump may accept packets lvsfw never marks (an ssh rule), and is not reported."""
    chains = _chains(others)
    found: list[tuple[str, list[str]]] = []
    for line in before:
        words = line.split()
        how, target = _target(words)
        if how == "-j" and target in _SKIPPING:
            found.append((f"foreign rule before lvsfw's jump skips its marks: {line}", words))
    for line in after:
        words = line.split()
        if xt_sets_mark(words):
            found.append((f"foreign rule after lvsfw's jump overrides its marks: {line}", words))
        else:
            found += _reached(
                line, chains, own, xt_sets_mark, "overrides lvsfw's marks after its jump"
            )
    return found


# -- nf_tables -----------------------------------------------------------------------------


def mark_setter(expr: object) -> bool:
    """Whether a rule's JSON expressions set ``meta mark`` (directly or in nested objects)."""
    return '"mangle": {"key": {"meta": {"key": "mark"}}' in json.dumps(expr)


def late_chains(items: Iterable[Any], skip: frozenset[tuple[str, str]]) -> list[dict[str, Any]]:
    """The base chains among listed ``items`` on the IP prerouting hook at the mangle priority
    or later, outside the ``skip`` tables ((family, name) pairs)."""
    late = []
    for item in items:
        chain = item.get("chain") if isinstance(item, dict) else None
        if not isinstance(chain, dict) or (chain.get("family"), chain.get("table")) in skip:
            continue
        prio = chain.get("prio")
        if (
            chain.get("hook") == "prerouting"
            and chain.get("family") in _NFT_FAMILIES
            and isinstance(prio, int)
            and prio >= MANGLE_PRIORITY
        ):
            late.append(chain)
    return late


def _jumps(obj: object) -> Iterator[tuple[str, str]]:
    """("chain", name) of each jump/goto in a JSON object, ("map", name) of each named
    verdict map it looks up."""
    if isinstance(obj, list):
        for value in obj:
            yield from _jumps(value)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key in {"jump", "goto"} and isinstance(value, dict):
                if isinstance(value.get("target"), str):
                    yield "chain", value["target"]
            elif key == "vmap" and isinstance(value, dict) and isinstance(value.get("data"), str):
                yield "map", value["data"].lstrip("@")
                yield from _jumps(value.get("key"))
            else:
                yield from _jumps(value)


def _text(value: object) -> str:
    """A short nft-like rendering of a mark expression (best effort, for the detail)."""
    text = json.dumps(value)[:60]
    if isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:#x}"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, dict) and len(value) == 1:
        key, inner = next(iter(value.items()))
        if key in {"meta", "ct"} and isinstance(inner, dict) and "key" in inner:
            text = f"{key} {inner['key']}"
        elif key in {"|", "&", "^", "<<", ">>"} and isinstance(inner, list) and len(inner) == 2:
            text = f"{_text(inner[0])} {key} {_text(inner[1])}"
        elif key == "map" and isinstance(inner, dict):
            text = f"{_text(inner.get('key'))} map {_text(inner.get('data'))}"
    return text


def _statement(rule: dict[str, Any]) -> str:
    """The rule's ``meta mark set`` statement, rendered, and its handle."""
    value: object = "..."
    for expr in rule.get("expr") or ():
        mangle = expr.get("mangle") if isinstance(expr, dict) else None
        if isinstance(mangle, dict) and mangle.get("key") == {"meta": {"key": "mark"}}:
            value = mangle.get("value")
            break
    return f"meta mark set {_text(value)} (handle {rule.get('handle', '?')})"


class _Table:
    """The chains and verdict maps of one table, listed on first use (each once)."""

    def __init__(self, read: Reader, family: str, name: str) -> None:
        self.read, self.family, self.name = read, family, name
        self._listed: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def objects(self, kind: str, name: str) -> list[dict[str, Any]]:
        """The rules of chain ``name`` (``kind`` "chain") or the map ``name`` ("map")."""
        key = (kind, name)
        if key not in self._listed:
            items = self.read(("list", kind, self.family, self.name, name))
            want = "rule" if kind == "chain" else "map"
            self._listed[key] = [
                i[want] for i in items if isinstance(i, dict) and isinstance(i.get(want), dict)
            ]
        return self._listed[key]


def _reachable(table: _Table, base: str) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """(chains passed through, rule) of every rule reachable from chain ``base``."""
    seen: set[str] = set()
    stack: list[tuple[str, ...]] = [(base,)]
    while stack:
        path = stack.pop()
        if path[-1] in seen:
            continue
        seen.add(path[-1])
        later: list[tuple[str, ...]] = []
        for rule in table.objects("chain", path[-1]):
            yield path, rule
            for kind, name in _jumps(rule.get("expr")):
                targets = [name] if kind == "chain" else []
                for found in table.objects("map", name) if kind == "map" else ():
                    targets += [n for k, n in _jumps(found.get("elem")) if k == "chain"]
                later += [(*path, t) for t in targets if t not in seen]
        stack += reversed(later)


def nft_overrides(read: Reader, skip: frozenset[tuple[str, str]] = COMPAT_TABLES) -> list[Finding]:
    """Foreign re-marks in nf_tables: one finding per mark-setting rule reachable from a
    base chain :func:`late_chains` gives (``read`` lists; one listing of every chain, then
    each reachable chain and verdict map once: nothing when no such base chain exists)."""
    found: list[Finding] = []
    tables: dict[tuple[str, str], _Table] = {}
    for chain in late_chains(read(("list", "chains")), skip):
        family, name = str(chain["family"]), str(chain["table"])
        table = tables.setdefault((family, name), _Table(read, family, name))
        base = str(chain["name"])
        for path, rule in _reachable(table, base):
            if not mark_setter(rule.get("expr")):
                continue
            via = f", through chain {' -> '.join(path[1:])}" if len(path) > 1 else ""
            detail = (
                f"foreign chain {family} {name} {base} re-marks packets after lvsfw's"
                f" (prerouting, priority {chain['prio']}{via}): {_statement(rule)}"
            )
            found.append(Finding(detail, family=_NFT_FAMILIES[family]))
    return found


def command(words: Words) -> dict[str, Any]:
    """The libnftables JSON command of a listing given as ``nft`` words."""
    if words == ("list", "chains"):
        return {"nftables": [{"list": {"chains": None}}]}
    kind, family, table, name = words[1:]
    return {"nftables": [{"list": {kind: {"family": family, "table": table, "name": name}}}]}


def native_overrides(netns: Optional[str]) -> list[Finding]:
    """:func:`nft_overrides` for the iptables backends: native nf_tables chains in ``netns``
    (``nft -j``), iptables-nft's mangle tables skipped. Nothing when ``nft`` is not installed
    or the kernel has no nf_tables (then no native chain can exist)."""

    def read(words: Words) -> list[Any]:
        listed = json.loads(run(["nft", "-j", *words], netns=netns) or "{}")
        items = listed.get("nftables", []) if isinstance(listed, dict) else []
        return items if isinstance(items, list) else []

    try:
        return nft_overrides(read)
    except BackendUnavailable:
        return []
    except CommandFailed as exc:
        if "not supported" in exc.stderr.lower():
            return []
        raise
