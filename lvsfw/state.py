"""What lvsfw owns: a small JSON state file per network namespace, written atomically.

The file is keyed by the namespace's identity (:func:`lvsfw.netns.namespace_key`), never by
how it was entered, and parsed strictly: a damaged file is an error naming the field, never
a silent claim on something lvsfw does not own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any, Optional

import attrs

from lvsfw.enums import Family
from lvsfw.errors import LvsfwError
from lvsfw.files import write_atomic
from lvsfw.model import MAX_MARK
from lvsfw.netns import namespace_key

STATE_DIR = "/var/lib/lvsfw"
#: Version 2 records every packet filter an apply may have written and the kernel objects
#: lvsfw created, version 3 the service half holding the services; older files (services,
#: firewall, pending) are read as before.
VERSION = 3
_VERSIONS = (1, 2, 3)
_FIELDS = {"version", "firewall", "pending", "services", "firewalls", "objects", "ipvs"}
_BACKEND = re.compile(r"[a-z][a-z0-9-]{0,31}")
#: A service half's name, then optionally ``:`` and an absolute path (keepalived's file).
_HOLDER = re.compile(r"[a-z][a-z0-9-]{0,31}(:/[^\x00-\x1f\x7f]{0,4095})?")
_OBJECT = re.compile(r"[a-z]+:[A-Za-z0-9_. -]{1,64}")

ServiceKey = tuple[Family, int]


def state_path(netns: Optional[str], state_dir: str = STATE_DIR) -> str:
    """``/var/lib/lvsfw/state.json`` for PID 1's namespace, ``state-KEY.json`` for another
    (KEY: its name under /run/netns, however it was entered; see
    :func:`lvsfw.netns.namespace_key`)."""
    key = namespace_key(netns)
    suffix = "" if key is None else f"-{key}"
    return os.path.join(state_dir, f"state{suffix}.json")


@attrs.frozen
class State:
    """What lvsfw owns in one namespace.

    ``services``: the IPVS services (family, mark) it created. ``firewall``: the packet filter
    it last applied with. ``firewalls``: every packet filter that may hold its rules (more
    than one only while an apply that switches filter is pending). ``objects``: kernel objects
    it created besides its own table or chains (``ipset:NAME``, ``table:ip mangle``), so a
    foreign object of the same name is never taken for its own. ``pending`` is True between
    the moment an apply widened this record and the moment it finished: a process killed in
    between leaves a state that still names everything it may have created, so the next
    apply, destroy, show or verify can see and clean it up. ``ipvs``: the service half that
    made ``services`` (its :attr:`~lvsfw.backends.base.ServiceHalf.holder`: ``ipvs``, or
    ``keepalived:`` and lvsfw's file); None in a file written before it was recorded.
    """

    services: frozenset[ServiceKey] = frozenset()
    firewall: Optional[str] = None
    pending: bool = False
    firewalls: frozenset[str] = frozenset()
    objects: frozenset[str] = frozenset()
    ipvs: Optional[str] = None

    @property
    def filters(self) -> frozenset[str]:
        """Every packet filter that may hold lvsfw's rules: ``firewalls`` and ``firewall``."""
        return self.firewalls | ({self.firewall} if self.firewall is not None else set())

    def to_json(self) -> str:
        """The file's text."""
        return json.dumps(
            {
                "version": VERSION,
                "firewall": self.firewall,
                "pending": self.pending,
                "firewalls": sorted(self.firewalls),
                "objects": sorted(self.objects),
                "services": [{"family": str(f), "mark": m} for f, m in sorted(self.services)],
                "ipvs": self.ipvs,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, path: str) -> State:
        """Parse the file's text strictly; anything unexpected is an :class:`LvsfwError`."""
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise _damaged(path, f"not JSON ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise _damaged(path, "not a JSON object")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise _damaged(path, f"unknown field {unknown[0]!r}")
        version = data.get("version", 1)
        if type(version) is not int or version not in _VERSIONS:
            raise _damaged(path, f"version {version!r} is not one of {list(_VERSIONS)}")
        firewall = data.get("firewall")
        if firewall is not None and not _backend(firewall):
            raise _damaged(path, f"firewall {firewall!r} is not a backend name")
        pending = data.get("pending", False)
        if type(pending) is not bool:
            raise _damaged(path, f"pending {pending!r} is not true or false")
        services = _services(data.get("services"), path)
        firewalls = _strings(data.get("firewalls", []), "firewalls", _BACKEND, path)
        objects = _strings(data.get("objects", []), "objects", _OBJECT, path)
        ipvs = data.get("ipvs")
        if ipvs is not None and (not isinstance(ipvs, str) or not _HOLDER.fullmatch(ipvs)):
            raise _damaged(path, f"ipvs {ipvs!r} is not a service half")
        return cls(services, firewall, pending, firewalls, objects, ipvs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


def _damaged(path: str, reason: str) -> LvsfwError:
    return LvsfwError(f"state file {path}: damaged ({reason}); fix or remove it")


def _backend(value: object) -> bool:
    return isinstance(value, str) and _BACKEND.fullmatch(value) is not None


def _services(items: object, path: str) -> frozenset[ServiceKey]:
    if not isinstance(items, list):
        raise _damaged(path, "services is not a list")
    keys = set()
    families = {str(f): f for f in Family}
    for item in items:
        if not isinstance(item, dict) or set(item) != {"family", "mark"}:
            raise _damaged(path, f"service {item!r} is not {{family, mark}}")
        family, mark = item["family"], item["mark"]
        if not isinstance(family, str) or family not in families:
            raise _damaged(path, f"service family {family!r} is not one of {sorted(families)}")
        if type(mark) is not int or not 1 <= mark <= MAX_MARK:
            raise _damaged(path, f"service mark {mark!r} is not an integer 1..{MAX_MARK}")
        keys.add((families[family], mark))
    return frozenset(keys)


def _strings(items: object, field: str, pattern: re.Pattern[str], path: str) -> frozenset[str]:
    if not isinstance(items, list):
        raise _damaged(path, f"{field} is not a list")
    for item in items:
        if not isinstance(item, str) or pattern.fullmatch(item) is None:
            raise _damaged(path, f"{field} entry {item!r} is not valid")
    return frozenset(items)


def read_text(path: str) -> Optional[str]:
    """The raw text of the state file, or None if it does not exist (see :func:`restore`)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LvsfwError(f"state file {path}: cannot read it: {exc.strerror}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _damaged(path, "not UTF-8 text") from None


def load(path: str) -> State:
    """The state in ``path``, or an empty state if the file does not exist."""
    text = read_text(path)
    return State() if text is None else State.from_json(text, path)


def restore(path: str, text: Optional[str]) -> None:
    """Put back what :func:`read_text` returned: that text (atomically), or no file at all."""
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    write_atomic(path, text, mode=0o600)


def save(path: str, state: State) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    write_atomic(path, state.to_json(), mode=0o600)

