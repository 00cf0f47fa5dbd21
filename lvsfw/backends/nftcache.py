"""A file recording what lvsfw's own last nftables commit wrote, so that a later process can
trust it instead of listing the whole table (the fast path of :mod:`lvsfw.backends.nftgen`
carried across processes: every ``lvsfw apply`` is a new one). A full read on that path,
after someone else's commit, records the table too when it is exactly what lvsfw writes for
its rules and nothing was committed while it was listed.

The record is keyed by the boot (``/proc/sys/kernel/random/boot_id``), the namespace cookie
and the nf_tables generation id its commit produced: the kernel bumps the generation on
every committed transaction in the namespace, by any tool, so the record describes the live
ruleset exactly while the three are unchanged. (The boot id is in the key because cookies
and generations start over at boot, while the file may outlive it.)

Format, version 1: one header line of JSON, ``\\n``, then the body::

    {"format": "lvsfw-nft-cache", "version": 1, "boot": "...", "cookie": C, "generation": G,
     "rules": R, "sha256": "<hex digest of the body>"}
    {"rules": [["ipv4", ...], [VIP_AS_INT, ...], ["tcp", ...], [FIRST, ...], [LAST, ...],
               [MARK, ...], [MASK, ...]],
     "names": ["bundle" | null, ...]}

Seven columns with a row per (normalized) rule of the table (its family, address as an
integer, protocol, ports, mark and mask), and its element comment at the same index. Reading
is strict and never fails: a missing, unreadable, foreign-owned (not root's or ours), group-
or world-writable, non-regular (a symlink is not followed) or malformed file, another
format, version, key or digest, a row that is not a valid rule, is ``None``, which the
backend answers with a full read.

Rows and rules convert at C speed where it counts (10,000 bundles are some 31,000 rules):
``operator.attrgetter`` reads a rule's fields, ``zip`` makes the rows, and a row equal to a
rule the process already holds (:func:`lvsfw.rules.expanded`: the specification being
applied) is that very object.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
import json
import operator
import os
import stat
from collections.abc import Callable, Iterable
from typing import Any, Optional

from lvsfw.backends.nftdelta import Target
from lvsfw.backends.nftgen import Generation
from lvsfw.backends.nftsyntax import FULL, note, paused_gc
from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.files import write_atomic
from lvsfw.rules import RULE_FIELDS, MarkRule, Normalized, rule_row

FORMAT = "lvsfw-nft-cache"
VERSION = 1
#: Larger files are not read (10,000 bundles make some 2 MB).
MAX_BYTES = 256 << 20
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_FAMILY = {f.value: f for f in Family}
_PROTOCOL = {p.value: p for p in Protocol}
_ADDRESS: dict[Family, Callable[[int], IPAddress]] = {
    Family.IPV4: ipaddress.IPv4Address,
    Family.IPV6: ipaddress.IPv6Address,
}
_HEADER_KEYS = {"format", "version", "boot", "cookie", "generation", "rules", "sha256"}

#: (boot id, namespace cookie, generation id): one exact state of a namespace's ruleset.
Key = tuple[str, int, int]


def boot_id() -> Optional[str]:
    """This boot's random id (None when the kernel does not say)."""
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            found = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return found or None


def key_of(generation: Optional[Generation]) -> Optional[Key]:
    """The record key of a namespace now at ``generation`` (None: unknown)."""
    boot = boot_id()
    if generation is None or boot is None:
        return None
    return (boot, generation[0], generation[1])


def discard(path: str) -> None:
    """Remove the record at ``path`` (before a commit: it is about to become stale). A record
    that cannot be removed is harmless: generations only move forward, so its key never
    matches again."""
    with contextlib.suppress(OSError):
        os.unlink(path)


#: A rule's row, field by field (:data:`lvsfw.rules.RULE_FIELDS`).
_FIELDS = RULE_FIELDS
_ROW = rule_row
_COLUMNS = tuple(map(operator.attrgetter, _FIELDS))
_VERSION = operator.attrgetter("family._value_", "vip._version")


def _body(target: Target) -> Optional[str]:
    """The body recording ``target`` (None: a rule whose family and address disagree)."""
    given = target.names
    if isinstance(given, dict) and not frozenset(given).difference(target.rules):
        # the usual case (a specification's own owners): rules and names in the dict's
        # order, at C speed through stored hashes; then the rules without a name
        rules = [*given, *target.rules.difference(given)]
        names: list[Optional[str]] = [*given.values(), *[None] * (len(rules) - len(given))]
    else:
        rules = list(target.rules)
        names = list(map(given.get, rules))
    if not set(map(_VERSION, rules)) <= {("ipv4", 4), ("ipv6", 6)}:
        return None
    unfit = {name for name in set(names) if note(name) != name}  # written uncommented
    if unfit:
        names = [None if name in unfit else name for name in names]
    body = {"rules": [list(map(column, rules)) for column in _COLUMNS], "names": names}
    return json.dumps(body, separators=(",", ":"))


@paused_gc()
def save(path: str, key: Key, target: Target) -> bool:
    """Record that the namespace at ``key`` holds exactly ``target`` (written atomically,
    mode 0600). False when it could not be written (the fast path is then simply lost)."""
    body = _body(target)
    if body is None:
        return False
    header = {
        "format": FORMAT,
        "version": VERSION,
        "boot": key[0],
        "cookie": key[1],
        "generation": key[2],
        "rules": len(target.rules),
        "sha256": hashlib.sha256(body.encode()).hexdigest(),
    }
    try:
        write_atomic(path, json.dumps(header, sort_keys=True) + "\n" + body, mode=0o600)
    except OSError:
        discard(path)
        return False
    return True


def _read(path: str) -> Optional[bytes]:
    """The bytes of ``path`` if it is a regular file (not followed if a symlink) owned by root
    or by us, writable by nobody else, and not too large; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        trusted = info.st_uid in (0, os.geteuid()) and not info.st_mode & 0o022
        if not stat.S_ISREG(info.st_mode) or not trusted or info.st_size > MAX_BYTES:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def _header(raw: bytes, key: Key) -> Optional[tuple[dict[str, Any], bytes]]:
    """The header and body of a record for ``key`` (None: another key, format or version)."""
    head, newline, body = raw.partition(b"\n")
    if not newline:
        return None
    header = json.loads(head)
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        return None
    if header["format"] != FORMAT or header["version"] != VERSION:
        return None
    found = (header["boot"], header["cookie"], header["generation"])
    if found != key or any(type(v) is not int for v in found[1:]):  # not bool
        return None
    if hashlib.sha256(body).hexdigest() != header["sha256"]:
        return None
    return header, body


def _rule(row: Any, addresses: dict[tuple[Family, int], IPAddress]) -> MarkRule:
    """The rule of a row that is not a known one, every field checked (ValueError, TypeError
    or LookupError: not a valid rule)."""
    family_name, number, proto, first, last, mark, mask = row
    numbers = (number, first, last, mark, mask)
    if any(type(n) is not int for n in numbers):  # JSON numbers: not float, not bool
        raise ValueError(f"not integers: {numbers}")
    if not (1 <= first <= last <= 65535 and 0 < mark <= FULL and 0 < mask <= FULL):
        raise ValueError(f"out of range: {numbers}")
    family = _FAMILY[family_name]
    vip = addresses.get((family, number))
    if vip is None:
        vip = addresses[family, number] = _ADDRESS[family](number)
    return MarkRule(family, vip, _PROTOCOL[proto], first, last, mark, mask)


def _target(body: Any, count: Any, known: Iterable[MarkRule]) -> Target:
    """The table data of a decoded body (ValueError, TypeError or LookupError: not valid).

    A row equal to one of the ``known`` rules is that very object (checked when it was made;
    comparing it with a specification holding it is then by identity); any other row is
    checked field by field.
    """
    if not isinstance(body, dict) or set(body) != {"rules", "names"}:
        raise ValueError("not a body")
    columns, names = body["rules"], body["names"]
    if not isinstance(columns, list) or len(columns) != len(_FIELDS):
        raise ValueError("not the columns of a rule")
    if not all(isinstance(c, list) and len(c) == count for c in [*columns, names]):
        raise ValueError("not the recorded number of rows")
    if not set(map(type, itertools.chain.from_iterable(columns))) <= {int, str}:
        raise ValueError("fields that are neither integers nor strings")  # bool, float, list
    known = list(known)
    find = dict(zip(map(_ROW, known), known)).get
    rows = list(zip(*columns))
    rules: list[Any] = list(map(find, rows))
    if type(None) in set(map(type, rules)):  # rows not known: made and checked one by one
        addresses: dict[tuple[Family, int], IPAddress] = {}
        rules = [rule or _rule(row, addresses) for rule, row in zip(rules, rows)]
    if not set(map(type, names)) <= {str, type(None)}:
        raise ValueError("names are not strings")
    if any(note(name) != name for name in set(names) - {None}):
        raise ValueError("not a bundle name")
    named = dict(zip(rules, names))  # each rule hashed once; the set below reuses the hashes
    if len(named) != len(rules):
        raise ValueError("repeated rules")
    normal = Normalized(named)
    if None in names:
        named = {rule: name for rule, name in named.items() if name is not None}
    return Target(normal, names=named)


@paused_gc()
def load(path: str, key: Optional[Key], known: Iterable[MarkRule] = ()) -> Optional[Target]:
    """What the record at ``path`` says the namespace at ``key`` holds; None when there is no
    valid record for exactly that key (see the module docstring). ``known``: rule objects to
    reuse for equal rows (:func:`lvsfw.rules.expanded`)."""
    if key is None:
        return None
    raw = _read(path)
    if raw is None:
        return None
    try:
        found = _header(raw, key)
        if found is None:
            return None
        header, body = found
        return _target(json.loads(body), header["rules"], known)
    except (ValueError, TypeError, LookupError, RecursionError):
        return None
