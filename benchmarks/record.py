"""What lvsfw asked of the kernel tools during one call: reads, dry runs and writes, and sizes.

Instrumentation only: it wraps, for the duration of a ``with`` block, the one method through
which each backend talks to its tool (libnftables ``Context.json``; ``Iptables._run``, for the
iptables tools and ``ipset``), and restores it afterwards. Nothing about what is sent changes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Call:
    """One tool call: ``kind`` read | dry-run | write, ``size`` commands+elements or lines."""

    kind: str
    tool: str
    size: int


@dataclass
class Log:
    """Every call recorded inside one ``recording()`` block."""

    calls: list[Call] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        """Counts per kind and the total size written."""
        out = {"reads": 0, "dry_runs": 0, "writes": 0, "written": 0}
        for call in self.calls:
            key = {"read": "reads", "dry-run": "dry_runs"}.get(call.kind, "writes")
            out[key] += 1
            out["written"] += call.size if call.kind == "write" else 0
        return out


def _nft_size(command: Any) -> tuple[str, int]:
    items = command.get("nftables", []) if isinstance(command, dict) else []
    verbs = {verb for item in items for verb in item}
    size = 0
    for item in items:
        for body in item.values():
            for obj in body.values() if isinstance(body, dict) else ():
                elems = obj.get("elem", []) if isinstance(obj, dict) else []
                size += len(elems) if isinstance(elems, list) else 1
            size += 1
    return ("read" if verbs <= {"list"} else "write"), size


def _is_read(tool: str, argv: list[str], stdin: Optional[str]) -> bool:
    """``*-save``, ``ipset list``/``save``, or an ``ipset restore`` of ``list`` lines only."""
    if tool.endswith("-save"):
        return True
    verbs = [w for w in argv[1:] if not w.startswith("-")]
    if tool != "ipset" or not verbs:
        return False
    if verbs[0] in {"list", "save"}:
        return True
    commands = {line.split()[0] for line in (stdin or "").splitlines() if line.strip()}
    return verbs[0] == "restore" and bool(commands) and commands <= {"list", "save"}


def _context_class() -> Optional[type]:
    module = importlib.import_module("lvsfw.backends.nftables")
    found = getattr(module, "Context", None) or getattr(module, "_Context", None)
    return found if isinstance(found, type) else None


@contextmanager
def recording() -> Iterator[Log]:
    """Record every nft JSON command and iptables tool call made inside the block."""
    log = Log()
    patched: list[tuple[Any, str, Any]] = []
    context = _context_class()
    if context is not None and hasattr(context, "json"):
        original_json = context.json

        def json(self: Any, command: Any, argv: tuple[str, ...]) -> Any:
            kind, size = _nft_size(command)
            kind = "dry-run" if "--check" in argv and kind == "write" else kind
            log.calls.append(Call(kind, "libnftables", size))
            return original_json(self, command, argv)

        patched.append((context, "json", original_json))
        context.json = json
    iptables = importlib.import_module("lvsfw.backends.iptables").Iptables
    if hasattr(iptables, "_run"):
        original_run = iptables._run

        def run(self: Any, argv: list[str], stdin: Optional[str] = None) -> str:
            tool = os.path.basename(argv[0])
            kind = (
                "read"
                if _is_read(tool, argv, stdin)
                else "dry-run"
                if "--test" in argv
                else "write"
            )
            log.calls.append(Call(kind, tool, stdin.count("\n") if stdin else 0))
            return str(original_run(self, argv, stdin))

        patched.append((iptables, "_run", original_run))
        iptables._run = run
    try:
        yield log
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
