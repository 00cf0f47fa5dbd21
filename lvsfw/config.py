"""TOML configuration files: ``[[bundle]]`` tables and a ``[director]`` table.

::

    [director]
    firewall = "nftables"      # or iptables-nft, iptables-legacy, auto
    ipvs = true
    # netns = "lb"             # work inside this network namespace
    # state_file = "/var/lib/lvsfw/state.json"

    [[bundle]]
    name = "web"
    vips = ["192.0.2.10", "2001:db8::10"]
    ports = "tcp:80,443"
    mark = 80
    scheduler = "wlc"
    persistence = 300
    real_servers = ["10.0.0.11", { address = "10.0.0.12", weight = 2, forwarding = "masq" }]

A ``[[bundle]]`` table has the fields of :class:`lvsfw.Bundle`; a real server is an address or
a table of :class:`lvsfw.RealServer`'s fields. Every error is a :class:`ConfigError` whose one
line names the file, the line and the field. :func:`dumps` writes a config back (``tomli-w``).
"""

from __future__ import annotations

import bisect
import difflib
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional

import attrs
import tomli_w

from lvsfw.errors import ConflictError, LvsfwError, ParseError, ValidationError
from lvsfw.model import FULL_MASK, Bundle, RealServer
from lvsfw.rules import specify
from lvsfw.textscan import comment

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

#: ``[[bundle]]`` keys and the TOML types each accepts (described for error messages).
BUNDLE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "vips": ((str, list), "an address or a list of addresses"),
    "ports": ((str, list), 'a port list such as "tcp:80,443 udp:53"'),
    "mark": ((int, str), 'an integer or "value/mask"'),
    "scheduler": ((str,), 'a scheduler name such as "wlc"'),
    "persistence": ((int,), "a timeout in seconds (leave it out for none)"),
    "persistence_netmask": ((int, str), 'a prefix length or a netmask such as "255.255.255.0"'),
    "persistence_prefix": ((int,), "an IPv6 prefix length"),
    "real_servers": ((list,), "a list of addresses or tables"),
}
SERVER_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "address": ((str,), "an address"),
    "weight": ((int,), "an integer 0..65535"),
    "forwarding": ((str,), "route, masq or tunnel"),
    "upper_threshold": ((int,), "an integer (0: none)"),
    "lower_threshold": ((int,), "an integer (0: none)"),
}
DIRECTOR_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "firewall": ((str,), "a packet-filter backend name or auto"),
    "ipvs": ((bool,), "true or false"),
    "netns": ((str,), "a network namespace name"),
    "state_file": ((str,), "a path"),
}
_FIELD_OF_ERROR = {
    "mark mask": "mark",
    "protocol": "ports",
    "port": "ports",
    "first_port": "ports",
    "last_port": "ports",
    "Bundle keyword": "",
}
_LINE_IN_MESSAGE = re.compile(r"at line (\d+)")


class ConfigError(LvsfwError):
    """A configuration file is not valid; one line naming the file, line and field."""

    def __init__(self, path: str, line: Optional[int], field: Optional[str], message: str) -> None:
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}" if line else path
        what = f" {field}:" if field else ""
        super().__init__(f"{where}:{what} {message}".replace("\n", " "))


@attrs.frozen
class DirectorSettings:
    """The ``[director]`` table; None where the file says nothing (the default applies)."""

    firewall: Optional[str] = None
    ipvs: Optional[bool] = None
    netns: Optional[str] = None
    state_file: Optional[str] = None

    def merged(self, **flags: Any) -> DirectorSettings:
        """These settings with every flag that is not None taking precedence."""
        given = {k: v for k, v in flags.items() if v is not None}
        return attrs.evolve(self, **given)


@attrs.frozen
class Config:
    """A loaded configuration: the bundles (conflict-checked) and the director settings."""

    bundles: tuple[Bundle, ...]
    director: DirectorSettings = DirectorSettings()
    path: str = "<string>"


class _Lines:
    """Finds the line of a table or key, so errors can point at it (tomllib gives none)."""

    # no backtracking: "[" then anything but "]" up to the first "]" (a line of blanks after
    # "[" made the old lazy pattern quadratic)
    _HEADER = re.compile(r"\s*\[\[?([^\]\n]*)\]")
    _NAME = re.compile(r"[A-Za-z0-9_.\"' -]+")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.tables: list[tuple[str, int]] = []  # (name, first line), only top-level tables
        self._starts: dict[str, list[int]] = {}
        for number, line in enumerate(self.lines, 1):
            found = self._HEADER.match(line)
            name = found[1].strip() if found else ""
            if name and self._NAME.fullmatch(name) and not name.startswith("bundle."):
                self.tables.append((name.strip("\"' "), number))
                self._starts.setdefault(name.strip("\"' "), []).append(number)
        self._all = [n for _, n in self.tables]

    def table(self, name: str, index: int = 0) -> tuple[int, int]:
        """First and last line of the ``index``-th table called ``name`` (1, 1 if none)."""
        starts = self._starts.get(name, [])
        if index >= len(starts):
            return 1, len(self.lines) or 1
        start = starts[index]
        after = bisect.bisect_right(self._all, start)
        return start, (self._all[after] - 1 if after < len(self._all) else len(self.lines))

    def key(self, span: tuple[int, int], key: str, value: Optional[str] = None) -> int:
        """The line in ``span`` defining ``key`` (or quoting ``value``); the span's first."""
        first, last = span
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number in range(first, last + 1):
            if pattern.match(self.lines[number - 1]):
                if value is None:
                    return number
                first = number
                break
        if value is not None:
            for number in range(first, last + 1):
                if f'"{value}"' in self.lines[number - 1] or f"'{value}'" in self.lines[number - 1]:
                    return number
        return first


def _check_keys(
    path: str,
    line: int,
    where: str,
    table: Mapping[str, Any],
    known: Mapping[str, Any],
    *,
    find: Optional[Callable[[str], int]] = None,
) -> None:
    for key in table:
        if key not in known:
            near = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(known)}"
            at = find(key) if find is not None else line
            raise ConfigError(path, at, f"{where}.{key}", f"unknown key; {hint}")


def _reason(exc: LvsfwError) -> str:
    """The message of a model error without its leading field name (the config names it)."""
    if isinstance(exc, ValidationError):
        return f"{exc.value!r} is not valid; expected {exc.allowed}"
    if isinstance(exc, ParseError):
        return f"cannot parse {exc.text!r}: {exc.reason}"
    return str(exc)


def _check_type(
    path: str, line: int, field: str, value: object, expected: tuple[tuple[type, ...], str]
) -> None:
    types, description = expected
    wrong_bool = isinstance(value, bool) and bool not in types
    if wrong_bool or not isinstance(value, types):
        raise ConfigError(path, line, field, f"{value!r} is not valid; expected {description}")


def _director(path: str, data: object, lines: _Lines) -> DirectorSettings:
    span = lines.table("director")
    if not isinstance(data, dict):
        raise ConfigError(path, span[0], "director", "expected a [director] table")
    _check_keys(path, span[0], "director", data, DIRECTOR_KEYS, find=lambda k: lines.key(span, k))
    for key, value in data.items():
        _check_type(path, lines.key(span, key), f"director.{key}", value, DIRECTOR_KEYS[key])
    return DirectorSettings(**data)


def _server(path: str, item: object, where: str, line: int) -> RealServer:
    if isinstance(item, dict):
        _check_keys(path, line, where, item, SERVER_KEYS)
        if "address" not in item:
            raise ConfigError(path, line, where, "a real server table needs an 'address' key")
        for key, value in item.items():
            _check_type(path, line, f"{where}.{key}", value, SERVER_KEYS[key])
    elif not isinstance(item, str):
        raise ConfigError(path, line, where, f"{item!r} is not valid; expected an address or table")
    try:
        return RealServer.parse(item)
    except (ValidationError, ParseError) as exc:
        field = getattr(exc, "field", "")
        suffix = f".{field}" if isinstance(item, dict) and field in SERVER_KEYS else ""
        raise ConfigError(path, line, where + suffix, _reason(exc)) from None


def _bundle(path: str, index: int, data: object, lines: _Lines) -> Bundle:
    span = lines.table("bundle", index)
    name = data.get("name") if isinstance(data, dict) else None
    where = f"bundle[{index}]" + (f" ({name})" if isinstance(name, str) else "")
    if not isinstance(data, dict):
        raise ConfigError(path, span[0], where, "expected a table")
    _check_keys(path, span[0], where, data, BUNDLE_KEYS, find=lambda k: lines.key(span, k))
    for required in ("name", "vips", "ports", "mark"):
        if required not in data:
            raise ConfigError(path, span[0], f"{where}.{required}", "missing (required)")
    for key, value in data.items():
        _check_type(path, lines.key(span, key), f"{where}.{key}", value, BUNDLE_KEYS[key])
    fields = dict(data)
    if isinstance(fields["ports"], list):
        if not all(isinstance(p, str) for p in fields["ports"]):
            line = lines.key(span, "ports")
            raise ConfigError(path, line, f"{where}.ports", "expected a list of strings")
        fields["ports"] = " ".join(fields["ports"])
    servers = []
    for number, item in enumerate(fields.get("real_servers", [])):
        address = item.get("address") if isinstance(item, dict) else item
        line = lines.key(span, "real_servers", address if isinstance(address, str) else None)
        servers.append(_server(path, item, f"{where}.real_servers[{number}]", line))
    fields["real_servers"] = servers
    try:
        return Bundle(**fields)
    except (ValidationError, ParseError) as exc:
        field = getattr(exc, "field", getattr(exc, "source", ""))
        key = _FIELD_OF_ERROR.get(field, field)
        if key not in BUNDLE_KEYS:
            key = next((k for k in BUNDLE_KEYS if k in str(exc).split(":")[0]), "")
        line = lines.key(span, key) if key else span[0]
        reason = _reason(exc) if key == field else str(exc)
        raise ConfigError(path, line, f"{where}.{key}" if key else where, reason) from None


def loads(text: str, path: str = "<string>") -> Config:
    """Parse configuration ``text`` (``path`` is only used in messages).

    Every failure is a :class:`ConfigError` naming ``path``: a file nested too deeply for
    the TOML parser (arrays or inline tables hundreds deep) included.
    """
    try:
        return _loads(text, path)
    except RecursionError:
        raise ConfigError(
            path, None, None, "arrays or tables nested too deeply (TOML parser recursion limit)"
        ) from None


def _loads(text: str, path: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _LINE_IN_MESSAGE.search(str(exc))
        line = int(found[1]) if found else getattr(exc, "lineno", None)
        raise ConfigError(path, line, None, f"TOML syntax error: {exc}") from None
    lines = _Lines(text)

    def top(key: str) -> int:
        return next(
            (n for t, n in lines.tables if t == key), lines.key((1, len(lines.lines) or 1), key)
        )

    _check_keys(path, 1, "(top level)", data, {"director": None, "bundle": None}, find=top)
    director = _director(path, data.get("director", {}), lines)
    raw = data.get("bundle", [])
    if not isinstance(raw, list):
        raise ConfigError(path, lines.table("bundle")[0], "bundle", "use [[bundle]] tables")
    bundles = tuple(_bundle(path, i, item, lines) for i, item in enumerate(raw))
    try:
        specify(bundles)
    except ConflictError as exc:
        names = [n for n in exc.names if isinstance(n, str)]
        line = None
        if names:
            index = next((i for i, b in enumerate(bundles) if b.name == names[-1]), None)
            line = lines.table("bundle", index)[0] if index is not None else None
        raise ConfigError(path, line, "bundle", f"conflict: {exc}") from None
    return Config(bundles, director, path)


def load(path: str) -> Config:
    """Read and parse the configuration file ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, None, f"cannot read: {exc}") from None
    return loads(text, path)


def server_data(server: RealServer) -> str | dict[str, object]:
    """A real server as the config writes it: its address alone when the rest is default."""
    defaults = RealServer(server.address)
    if server == defaults:
        return str(server.address)
    data: dict[str, object] = {"address": str(server.address)}
    for field in attrs.fields(RealServer)[1:]:
        value = getattr(server, field.name)
        if value != getattr(defaults, field.name):
            data[field.name] = str(value) if field.name == "forwarding" else value
    return data


def bundle_data(bundle: Bundle) -> dict[str, object]:
    """One ``[[bundle]]`` table; defaults are left out."""
    service = bundle.service
    mark = bundle.mark
    data: dict[str, object] = {
        "name": bundle.name,
        "vips": [str(v) for v in bundle.vips],
        "ports": str(bundle.ports),
        "mark": mark.value if mark.mask == FULL_MASK else str(mark),
        "scheduler": str(service.scheduler),
    }
    if service.persistence is not None:
        data["persistence"] = service.persistence
        if service.persistence_netmask != 32:
            data["persistence_netmask"] = service.persistence_netmask
        if service.persistence_prefix != 128:
            data["persistence_prefix"] = service.persistence_prefix
    data["real_servers"] = [server_data(s) for s in service.real_servers]
    return data


def dumps(
    bundles: Iterable[Bundle],
    director: Optional[DirectorSettings] = None,
    header: Sequence[str] = (),
) -> str:
    """The TOML text of a configuration; ``header`` lines become leading comments (control
    characters in them escaped: a header can never add a line of live TOML)."""
    data: dict[str, object] = {}
    if director is not None:
        settings = {k: v for k, v in attrs.asdict(director).items() if v is not None}
        if settings:
            data["director"] = settings
    data["bundle"] = [bundle_data(b) for b in bundles]
    comments = "".join(f"# {comment(line)}".rstrip() + "\n" for line in header)
    return comments + ("\n" if comments else "") + tomli_w.dumps(data)


def dump(path: str, bundles: Iterable[Bundle], director: Optional[DirectorSettings] = None) -> None:
    """Write a configuration file (see :func:`dumps`)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(bundles, director))
