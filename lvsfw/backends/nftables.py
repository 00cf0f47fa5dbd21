"""The nftables backend: one own table ``inet lvsfw`` loaded through libnftables JSON.

The table has a constant skeleton and data::

    map mark4   { type ipv4_addr . inet_proto . inet_service : mark;    flags interval }
    map mark6   { type ipv6_addr . inet_proto . inet_service : mark;    flags interval }
    map masked4 { type ipv4_addr . inet_proto . inet_service : verdict; flags interval }
    map masked6 { type ipv6_addr . inet_proto . inet_service : verdict; flags interval }
    chain mark-VVVVVVVV-MMMMMMMM { meta mark set meta mark & KEEP | VVVVVVVV }
    chain prerouting { type filter hook prerouting priority mangle; policy accept;
        meta mark set ip daddr . meta l4proto . th dport map @mark4   (and ip6, @mark6)
        ip daddr . meta l4proto . th dport vmap @masked4              (and ip6, @masked6) }

A packet costs one interval-map lookup per family whatever the number of bundles. A full-mask
mark is the datum of ``markN``. A masked mark must keep the packet's bits outside the mask, and
nft 1.0.6 cannot OR a map's result into the mark (the right side of ``|`` must be a constant),
so a masked mark is an element of ``maskedN`` jumping (goto) to a one-rule chain per distinct
(mark, mask) that does ``meta mark & ~mask | mark`` with constants. nft prints that AND operand
as ``~mask | mark`` (it folds the mark's bits in); lvsfw renders the same canonical form.

Writes are single libnftables transactions: the whole table when it is absent (or replaced
after drift), otherwise only the map elements and mark chains that differ.
"""

from __future__ import annotations

import ctypes
import importlib
import json
from collections.abc import Callable
from typing import Any, ClassVar, Optional

from lvsfw.backends.base import Finding, PacketFilter
from lvsfw.backends.nftsyntax import (
    ADDR,
    FAMILY,
    INSTALL_HINT,
    MAPS,
    PARSE_ERRORS,
    SKELETON,
    TABLE,
    TABLE_OBJ,
    Json,
    LiveState,
    T,
    Table,
    add_mark_chain,
    analyse,
    desired,
    element_list,
    elements,
    kept_bits,
    key_text,
    map_type,
    mark_line,
    parse_json_table,
    parse_text,
    sorted_elements,
    table_object,
)
from lvsfw.errors import BackendUnavailable, CommandFailed, ParseError
from lvsfw.netns import call_in_netns
from lvsfw.rules import MarkRule, Specification


class Context:
    """A typed adapter over one libnftables context (the untyped ``nftables`` binding)."""

    def __init__(self) -> None:
        try:
            self._nft: Any = importlib.import_module("nftables").Nftables()
        except (ImportError, OSError, AttributeError) as exc:
            raise BackendUnavailable(f"libnftables cannot be used ({exc}); {INSTALL_HINT}") from exc

    def json(self, command: Json, argv: tuple[str, ...]) -> Any:
        """Run ``command``; its JSON output (if any), or CommandFailed describing ``argv``."""
        rc, output, error = self._nft.json_cmd(command)
        if rc != 0:
            raise CommandFailed(argv, int(rc), str(error))
        return output

    def set_dry_run(self, dry: bool) -> None:
        """Have libnftables send batches for validation only (the kernel aborts them)."""
        if hasattr(self._nft, "set_dry_run"):
            self._nft.set_dry_run(dry)
            return
        ctx = getattr(self._nft, "_Nftables__ctx", None)  # pip-nftables 1.0.2 has no setter
        if ctx is None:
            raise BackendUnavailable(f"this nftables binding cannot dry-run; {INSTALL_HINT}")
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        lib.nft_ctx_set_dry_run(ctx, dry)


MANGLE_PRIORITY = -150


def _mark_setter(expr: object) -> bool:
    """Whether a rule's JSON expressions set ``meta mark`` (directly or in nested objects)."""
    text = json.dumps(expr)
    return '"mangle": {"key": {"meta": {"key": "mark"}}' in text


def foreign_overrides(items: list[Any]) -> list[Finding]:
    """Foreign prerouting base chains at priority >= mangle whose rules set the mark."""
    late: set[tuple[str, str, str]] = set()
    for item in items:
        chain = item.get("chain") if isinstance(item, dict) else None
        if not chain or (chain.get("family"), chain.get("table")) == (FAMILY, TABLE):
            continue
        if chain.get("hook") == "prerouting" and int(chain.get("prio", 0)) >= MANGLE_PRIORITY:
            late.add((chain["family"], chain["table"], chain["name"]))
    found = []
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        key = (rule["family"], rule["table"], rule["chain"]) if rule else None
        if key in late and rule and _mark_setter(rule.get("expr")):
            where = f"{rule['family']} {rule['table']} {rule['chain']}"
            found.append(Finding(f"foreign rule in {where} re-marks packets after lvsfw"))
    return found


class Nftables(PacketFilter):
    """Marks packets from interval maps in table ``inet lvsfw`` (see the module docstring)."""

    name: ClassVar[str] = "nftables"

    def __init__(self, netns: Optional[str] = None) -> None:
        super().__init__(netns)
        #: The transaction the last :meth:`apply` sent (None: it wrote nothing).
        self.last_transaction: Optional[Json] = None

    @classmethod
    def available(cls) -> None:
        """Raise BackendUnavailable when the binding or libnftables cannot be loaded."""
        Context()

    def _argv(self, *words: str) -> tuple[str, ...]:
        prefix = ("ip", "netns", "exec", self.netns) if self.netns else ()
        return (*prefix, "nft", *words)

    def _in_netns(self, work: Callable[[Context], T]) -> T:
        """``work`` with a libnftables context created in this backend's namespace."""
        return call_in_netns(self.netns, lambda: work(Context()))

    def render_spec(self, spec: Specification) -> str:
        """The ``nft -f`` script of the whole table, in the format ``nft list`` prints."""
        content, chains = desired(spec.rules)
        blocks = []
        for name, (family, kind) in MAPS.items():
            head = f"\tmap {name} {{\n\t\ttype {map_type(family, kind)}\n\t\tflags interval\n"
            items = [
                f"{key_text(k)} : " + (f"{v:#010x}" if isinstance(v, int) else f"goto {v}")
                for k, v in sorted_elements(content[name])
            ]
            if items:
                head += "\t\telements = { " + ",\n\t\t\t     ".join(items) + " }\n"
            blocks.append(head + "\t}")
        for name, (mark, mask) in sorted(chains.items()):
            blocks.append(f"\tchain {name} {{\n\t\t{mark_line(kept_bits(mark, mask), mark)}\n\t}}")
        rules = "".join(f"\t\t{text}\n" for text, _ in SKELETON)
        hook = "type filter hook prerouting priority mangle; policy accept;"
        blocks.append(f"\tchain prerouting {{\n\t\t{hook}\n{rules}\t}}")
        return f"table {FAMILY} {TABLE} {{\n" + "\n\n".join(blocks) + "\n}\n"

    def render_json(self, spec: Specification, replace: bool = False) -> Json:
        """The libnftables JSON creating the whole table (``replace``: deleting it first)."""
        content, chains = desired(spec.rules)
        commands: list[Json] = [{"add": TABLE_OBJ}]
        if replace:
            commands += [{"delete": TABLE_OBJ}, {"add": TABLE_OBJ}]
        for name, (mark, mask) in sorted(chains.items()):
            commands += add_mark_chain(name, mark, mask)
        for name, (family, kind) in MAPS.items():
            key_type = [ADDR[family][1], "inet_proto", "inet_service"]
            body = table_object("map", name=name, type=key_type, map=kind, flags=["interval"])
            if content[name]:
                body["map"]["elem"] = element_list(sorted_elements(content[name]))
            commands.append({"add": body})
        hook = dict(
            zip(("type", "hook", "prio", "policy"), ("filter", "prerouting", -150, "accept"))
        )
        commands.append({"add": table_object("chain", name="prerouting", **hook)})
        commands += [{"add": table_object("rule", chain="prerouting", expr=e)} for _, e in SKELETON]
        return {"nftables": commands}

    def parse(self, text: str) -> frozenset[MarkRule]:
        """The mark rules of table inet lvsfw in a rendered script or ``nft list`` output."""
        return self._rules(parse_text, text)

    def parse_json(self, obj: object) -> frozenset[MarkRule]:
        """The mark rules of table inet lvsfw in ``nft -j list`` output (a decoded object)."""
        return self._rules(parse_json_table, obj)

    @staticmethod
    def _rules(parse: Callable[[Any], Optional[Table]], source: Any) -> frozenset[MarkRule]:
        try:
            table = parse(source)
            state = LiveState(False) if table is None else analyse(table)
        except ParseError:
            raise
        except PARSE_ERRORS as exc:
            raise ParseError("nftables", str(source)[:80], f"not nft syntax ({exc})") from exc
        if state.unresolved:
            raise ParseError("nftables", state.unresolved[0], "an element whose mark is unknown")
        return state.rules

    def _exists(self, ctx: Context) -> bool:
        command = {"nftables": [{"list": {"tables": {"family": FAMILY}}}]}
        listed = ctx.json(command, self._argv("-j", "list", "tables", FAMILY))
        return {"family": FAMILY, "name": TABLE} in [
            {k: v for k, v in item["table"].items() if k in ("family", "name")}
            for item in listed["nftables"]
            if "table" in item
        ]

    def _live(self, ctx: Context) -> LiveState:
        if not self._exists(ctx):
            return LiveState(False)
        command = {"nftables": [{"list": TABLE_OBJ}]}
        dump = ctx.json(command, self._argv("-j", "list", "table", FAMILY, TABLE))
        try:
            table = parse_json_table(dump)
        except PARSE_ERRORS as exc:
            raise ParseError("nftables", str(dump)[:80], f"unexpected listing ({exc})") from exc
        return LiveState(False) if table is None else analyse(table)

    def live_state(self) -> LiveState:
        """The live table: rules, and every departure from lvsfw's layout (for drift)."""
        return self._in_netns(self._live)

    def read(self) -> frozenset[MarkRule]:
        """The mark rules the live table applies (empty when it is absent)."""
        return self.live_state().rules

    def _plan(self, ctx: Context, spec: Specification) -> Optional[Json]:
        live = self._live(ctx)
        if not live.intact:
            return self.render_json(spec, replace=live.exists)
        content, chains = desired(spec.rules)
        added, deleted = chains.keys() - live.chains.keys(), live.chains.keys() - chains.keys()
        commands = [c for name in sorted(added) for c in add_mark_chain(name, *chains[name])]
        adds: list[Json] = []
        for name in MAPS:
            have, want = live.content.get(name, {}), content[name]
            commands += elements(
                "delete", name, sorted_elements(dict(have.items() - want.items())), False
            )
            adds += elements("add", name, sorted_elements(dict(want.items() - have.items())), True)
        commands += adds + [
            {"delete": table_object("chain", name=name)} for name in sorted(deleted)
        ]
        return {"nftables": commands} if commands else None

    def plan(self, spec: Specification) -> Optional[Json]:
        """The transaction :meth:`apply` would send now (None: nothing to write)."""
        return self._in_netns(lambda ctx: self._plan(ctx, spec))

    def check(self, spec: Specification) -> None:
        """Have libnftables and the kernel validate replacing the table by ``spec`` (dry run)."""

        def work(ctx: Context) -> None:
            ctx.set_dry_run(True)
            ctx.json(self.render_json(spec, replace=True), self._argv("--check", "-j", "-f", "-"))

        self._in_netns(work)

    def apply(self, spec: Specification) -> None:
        """Make the table equal ``spec`` in one transaction: only the difference, or nothing."""

        def work(ctx: Context) -> Optional[Json]:
            transaction = self._plan(ctx, spec)
            if transaction is not None:
                ctx.json(transaction, self._argv("-j", "-f", "-"))
            return transaction

        self.last_transaction = self._in_netns(work)

    def findings(self, spec: Specification) -> list[Finding]:
        """The own table missing or altered; foreign prerouting chains that re-mark packets.

        A foreign base chain on the prerouting hook at lvsfw's priority (mangle, -150) or later
        that sets ``meta mark`` may override the bundles' marks. (An ``accept`` elsewhere does
        not skip lvsfw's chain: every base chain of a hook sees the packet.)
        """

        def work(ctx: Context) -> list[Finding]:
            live = self._live(ctx)
            found = [Finding(f"table {FAMILY} {TABLE}: {p}") for p in live.problems]
            if not live.exists and spec.rules:
                found.append(Finding(f"table {FAMILY} {TABLE} is missing"))
            listing = ctx.json(
                {"nftables": [{"list": {"ruleset": None}}]}, self._argv("-j", "list", "ruleset")
            )
            found += foreign_overrides(listing.get("nftables", []))
            return found

        return self._in_netns(work)

    def remove(self) -> None:
        """Delete table inet lvsfw if it exists; nothing else is touched."""

        def work(ctx: Context) -> None:
            if self._exists(ctx):
                argv = self._argv("delete", "table", FAMILY, TABLE)
                ctx.json({"nftables": [{"delete": TABLE_OBJ}]}, argv)

        self._in_netns(work)
