"""keepalived.conf text of health checks and failure settings, both ways.

Rendered inside ``virtual_server`` (``delay_loop``, ``sorry_server``, ``quorum``,
``hysteresis``) and ``real_server`` blocks (``inhibit_on_failure``, one checker block:
``TCP_CHECK``, ``HTTP_GET``/``SSL_GET`` with one ``url``, ``MISC_CHECK``), in the keywords of
keepalived.conf(5) for keepalived 2.x; parsed back into :mod:`lvsfw.health` values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Protocol

from lvsfw.enums import Family
from lvsfw.errors import ParseError
from lvsfw.health import CHECKERS, HealthCheck, SorryServer
from lvsfw.model import VirtualService

_KINDS = {block: kind for kind, block in CHECKERS.items()}


class Node(Protocol):
    """A parsed keepalived statement (see :mod:`lvsfw.backends.keepalived`)."""

    @property
    def words(self) -> tuple[str, ...]: ...

    @property
    def children(self) -> Optional[tuple[Node, ...]]: ...


def service_lines(vs: VirtualService, family: Family) -> list[str]:
    """The service-level lines (four spaces in) of ``family``'s block: a sorry server only in
    the block of its own family (keepalived skips it in the other, with a warning)."""
    lines = []
    if vs.delay_loop is not None:
        lines.append(f"    delay_loop {vs.delay_loop}")
    if vs.sorry_server is not None and Family.of(vs.sorry_server.address) == family:
        lines.append(f"    sorry_server {vs.sorry_server.address} {vs.sorry_server.port}")
    if vs.quorum is not None:
        lines.append(f"    quorum {vs.quorum}")
    if vs.hysteresis is not None:
        lines.append(f"    hysteresis {vs.hysteresis}")
    lines += [f"    {flag}" for flag in ("alpha", "omega") if getattr(vs, flag)]
    return lines


def server_lines(check: Optional[HealthCheck], inhibit: bool) -> list[str]:
    """The lines inside a ``real_server`` block (eight spaces in) for its check."""
    lines = ["        inhibit_on_failure"] if inhibit else []
    if check is None:
        return lines
    lines.append(f"        {CHECKERS[check.check]} {{")
    inner = " " * 12
    if check.check in ("http", "https"):
        lines += [f"{inner}url {{", f"{inner}    path {check.path}"]
        if check.digest is not None:
            lines.append(f"{inner}    digest {check.digest}")
        lines.append(f"{inner}    status_code {' '.join(map(str, check.status))}")
        lines.append(f"{inner}}}")
    if check.connects:
        lines.append(f"{inner}connect_port {check.port}")
        if check.timeout is not None:
            lines.append(f"{inner}connect_timeout {check.timeout}")
    else:
        lines.append(f'{inner}misc_path "{check.script}"')
        if check.timeout is not None:
            lines.append(f"{inner}misc_timeout {check.timeout}")
        if check.dynamic:
            lines.append(f"{inner}misc_dynamic")
    if check.retry is not None:
        lines.append(f"{inner}retry {check.retry}")
    if check.delay_before_retry is not None:
        lines.append(f"{inner}delay_before_retry {check.delay_before_retry}")
    lines.append("        }")
    return lines


def _int(node: Node) -> int:
    words = node.words
    if len(words) != 2 or not (words[1].isascii() and words[1].isdigit()):
        raise ParseError("keepalived", " ".join(words), "expected 'keyword INTEGER'")
    return int(words[1])


def parse_check(node: Node) -> HealthCheck:
    """A checker block (``TCP_CHECK { ... }`` and its siblings) as a HealthCheck."""
    fields: dict[str, object] = {"check": _KINDS[node.words[0]]}
    numbers = {"connect_port": "port", "connect_timeout": "timeout", "misc_timeout": "timeout",
               "retry": "retry", "nb_get_retry": "retry",
               "delay_before_retry": "delay_before_retry"}  # fmt: skip
    for child in node.children or ():
        keyword = child.words[0] if child.words else ""
        if keyword in numbers:
            fields[numbers[keyword]] = _int(child)
        elif keyword == "misc_path":
            fields["script"] = " ".join(child.words[1:]).strip('"')
        elif keyword == "misc_dynamic":
            fields["dynamic"] = True
        elif keyword == "url":
            for item in child.children or ():
                if item.words[:1] == ("path",) and len(item.words) == 2:
                    fields["path"] = item.words[1]
                elif item.words[:1] == ("digest",) and len(item.words) == 2:
                    fields["digest"] = item.words[1]
                elif item.words[:1] == ("status_code",):
                    fields["status"] = [int(w) for w in item.words[1:] if w.isdigit()]
    return HealthCheck.parse(fields)


def checker_of(children: Sequence[Node]) -> Optional[HealthCheck]:
    """The first checker block among a ``real_server``'s statements, if any."""
    for child in children:
        if child.words[:1] and child.words[0] in _KINDS and child.children is not None:
            return parse_check(child)
    return None


def service_fields(items: dict[str, Node]) -> dict[str, object]:
    """VirtualService keywords from a block's one-line statements (keyword -> node)."""
    fields: dict[str, object] = {}
    for keyword in ("delay_loop", "quorum", "hysteresis"):
        if keyword in items:
            fields[keyword] = _int(items[keyword])
    if "sorry_server" in items:
        words = items["sorry_server"].words[1:]
        port = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
        address = words[0] if words else ""
        fields["sorry_server"] = SorryServer.parse({"address": address, "port": port})
    for flag in ("alpha", "omega"):
        if flag in items:
            fields[flag] = True
    return fields
