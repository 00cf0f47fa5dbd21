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
import functools
import gc
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional, Union

import attrs
import tomli_w

from lvsfw.cluster import Cluster
from lvsfw.errors import ConflictError, LvsfwError, ParseError, ValidationError
from lvsfw.model import FULL_MASK, Bundle, RealServer
from lvsfw.ports import PortBundle
from lvsfw.rules import specify
from lvsfw.textscan import comment

try:  # tomli, tomllib's upstream, ships mypyc-compiled wheels: 1.6 MB of TOML (10,000
    # bundles) parses in 0.09 s instead of the standard library's 0.27 s; same parser, same
    # errors
    import tomli as tomllib
except ImportError:  # pragma: no cover - a source install without it
    import tomllib  # type: ignore[no-redef]

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
    "health": ((dict,), 'a table such as { check = "http", path = "/healthz" }'),
    "delay_loop": ((int,), "seconds between health checks"),
    "sorry_server": ((str, dict), "an address or { address }"),
    "quorum": ((int,), "the real servers' total weight below which the service is down"),
    "hysteresis": ((int,), "an integer below the quorum"),
    "inhibit_on_failure": ((bool,), "true or false"),
    "alpha": ((bool,), "true or false"),
    "omega": ((bool,), "true or false"),
}
SERVER_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "address": ((str,), "an address"),
    "weight": ((int,), "an integer 0..65535"),
    "forwarding": ((str,), "route, masq or tunnel"),
    "upper_threshold": ((int,), "an integer (0: none)"),
    "lower_threshold": ((int,), "an integer (0: none)"),
    "health": ((dict,), 'a table such as { check = "tcp", port = 80 }'),
}
DIRECTOR_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "firewall": ((str,), "a packet-filter backend name or auto"),
    "ipvs": ((bool, str), 'true, false, "ipvsadm", "keepalived" or "none"'),
    "netns": ((str,), "a network namespace name"),
    "state_file": ((str,), "a path"),
    "keepalived_conf": ((str,), "the path of the keepalived.conf lvsfw writes"),
    "node": ((str,), "this director's name in [[cluster.node]]"),
}
#: The values ``[director] ipvs`` (and ``--ipvs``) takes besides true and false.
IPVS_MODES = ("ipvsadm", "keepalived", "none")
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
    #: True/"ipvsadm": lvsfw drives IPVS; "keepalived": keepalived does, from lvsfw's file;
    #: False/"none": marks only.
    ipvs: Union[bool, str, None] = None
    netns: Optional[str] = None
    state_file: Optional[str] = None
    #: Where the keepalived.conf is written (``ipvs = "keepalived"``).
    keepalived_conf: Optional[str] = None
    #: This director's node of ``[cluster]`` (the whole keepalived.conf is rendered for it).
    node: Optional[str] = None

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
    #: The ``[cluster]`` table: the HA pair the bundles' VIPs fail over in (None: none).
    cluster: Optional[Cluster] = None


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
        candidates = [(n, line) for n, line in enumerate(self.lines, 1) if "[" in line]
        for number, line in candidates:  # a header has a "[": test only those lines
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


def _fits(value: object, expected: tuple[tuple[type, ...], str]) -> bool:
    """Whether ``value`` has one of the expected types (a bool only where bool is listed)."""
    types = expected[0]
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _check_type(
    path: str,
    line: Callable[[], int] | int,
    field: str,
    value: object,
    expected: tuple[tuple[type, ...], str],
) -> None:
    """Raise ConfigError when ``value`` is not of the expected types; ``line`` may be a
    function, called only then (finding a line costs a scan of the table's text)."""
    if not _fits(value, expected):
        at = line() if callable(line) else line
        description = expected[1]
        raise ConfigError(path, at, field, f"{value!r} is not valid; expected {description}")


def _director(path: str, data: object, lines: _Lines) -> DirectorSettings:
    span = lines.table("director")
    if not isinstance(data, dict):
        raise ConfigError(path, span[0], "director", "expected a [director] table")
    _check_keys(path, span[0], "director", data, DIRECTOR_KEYS, find=lambda k: lines.key(span, k))
    for key, value in data.items():
        find = functools.partial(lines.key, span, key)
        _check_type(path, find, f"director.{key}", value, DIRECTOR_KEYS[key])
    ipvs = data.get("ipvs")
    if isinstance(ipvs, str) and ipvs not in IPVS_MODES:
        message = f"{ipvs!r} is not valid; expected {DIRECTOR_KEYS['ipvs'][1]}"
        raise ConfigError(path, lines.key(span, "ipvs"), "director.ipvs", message)
    return DirectorSettings(**data)


def _server(path: str, item: object, where: str, find: Callable[[], int]) -> RealServer:
    """One real server; ``find()`` is its line (only looked for when there is an error)."""
    if isinstance(item, dict):
        if not SERVER_KEYS.keys() >= item.keys() or "address" not in item:
            _check_keys(path, find(), where, item, SERVER_KEYS)
            raise ConfigError(path, find(), where, "a real server table needs an 'address' key")
        for key, value in item.items():
            _check_type(path, find, f"{where}.{key}", value, SERVER_KEYS[key])
    elif not isinstance(item, str):
        raise ConfigError(
            path, find(), where, f"{item!r} is not valid; expected an address or table"
        )
    try:
        return RealServer.parse(item)
    except (ValidationError, ParseError) as exc:
        field = getattr(exc, "field", "")
        suffix = f".{field}" if isinstance(item, dict) and field in SERVER_KEYS else ""
        raise ConfigError(path, find(), where + suffix, _reason(exc)) from None


def _bundle(
    path: str, index: int, data: object, lines: _Lines, ports: dict[str, PortBundle]
) -> Bundle:
    """Bundle ``index``; ``ports``: the port lists parsed so far, by text (many bundles share
    one: each distinct text is parsed once)."""
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
        if not _fits(value, BUNDLE_KEYS[key]):
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
        quoted = address if isinstance(address, str) else None
        find = functools.partial(lines.key, span, "real_servers", quoted)
        servers.append(_server(path, item, f"{where}.real_servers[{number}]", find))
    fields["real_servers"] = servers
    text = fields["ports"]
    fields["ports"] = ports.get(text, text) if isinstance(text, str) else text
    try:
        bundle = Bundle(**fields)
        if isinstance(text, str):
            ports[text] = bundle.ports
        return bundle
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
    collecting = gc.isenabled()
    gc.disable()  # everything built here lives on: collecting while building is wasted work
    try:
        return _loads(text, path)
    except RecursionError:
        raise ConfigError(
            path, None, None, "arrays or tables nested too deeply (TOML parser recursion limit)"
        ) from None
    finally:
        if collecting:
            gc.enable()


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

    known = {"director": None, "bundle": None, "cluster": None}
    _check_keys(path, 1, "(top level)", data, known, find=top)
    director = _director(path, data.get("director", {}), lines)
    raw = data.get("bundle", [])
    if not isinstance(raw, list):
        raise ConfigError(path, lines.table("bundle")[0], "bundle", "use [[bundle]] tables")
    parsed: dict[str, PortBundle] = {}
    bundles = tuple(_bundle(path, i, item, lines, parsed) for i, item in enumerate(raw))
    try:
        specify(bundles)
    except ConflictError as exc:
        names = [n for n in exc.names if isinstance(n, str)]
        line = None
        if names:
            index = next((i for i, b in enumerate(bundles) if b.name == names[-1]), None)
            line = lines.table("bundle", index)[0] if index is not None else None
        raise ConfigError(path, line, "bundle", f"conflict: {exc}") from None
    cluster = _cluster(path, data.get("cluster"), lines, bundles)
    if director.node is not None:
        names = [n.name for n in cluster.nodes] if cluster is not None else []
        if director.node not in names:
            want = f"one of {', '.join(names)}" if names else "a node of a [cluster] table"
            line = lines.key(lines.table("director"), "node")
            raise ConfigError(path, line, "director.node", f"{director.node!r}: want {want}")
    return Config(bundles, director, path, cluster)


def _cluster(
    path: str, data: object, lines: _Lines, bundles: tuple[Bundle, ...]
) -> Optional[Cluster]:
    """The ``[cluster]`` table (``[[cluster.node]]`` rows), checked against the bundles."""
    if data is None:
        return None
    line = next((n for t, n in lines.tables if t in ("cluster", "cluster.node")), None)
    try:
        cluster = Cluster.parse(data)
        cluster.check(bundles)
    except ValidationError as exc:
        raise ConfigError(path, line, "cluster", str(exc)) from None
    return cluster


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
    if server == defaults and server.health is None:
        return str(server.address)
    data: dict[str, object] = {"address": str(server.address)}
    for field in attrs.fields(RealServer)[1:]:
        value = getattr(server, field.name)
        if field.name == "health":
            if value is not None:
                data["health"] = value.data()
        elif value != getattr(defaults, field.name):
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
    if service.health is not None:
        data["health"] = service.health.data()
    if service.sorry_server is not None:
        data["sorry_server"] = str(service.sorry_server.address)
    for key in ("delay_loop", "quorum", "hysteresis"):
        if getattr(service, key) is not None:
            data[key] = getattr(service, key)
    for flag in ("inhibit_on_failure", "alpha", "omega"):
        if getattr(service, flag):
            data[flag] = True
    return data


def dumps(
    bundles: Iterable[Bundle],
    director: Optional[DirectorSettings] = None,
    header: Sequence[str] = (),
    cluster: Optional[Cluster] = None,
) -> str:
    """The TOML text of a configuration; ``header`` lines become leading comments (control
    characters in them escaped: a header can never add a line of live TOML); ``cluster``
    the ``[cluster]`` table (:meth:`Cluster.data`), written before the bundles."""
    data: dict[str, object] = {}
    if director is not None:
        settings = {k: v for k, v in attrs.asdict(director).items() if v is not None}
        if settings:
            data["director"] = settings
    if cluster is not None:
        data["cluster"] = cluster.data()
    data["bundle"] = [bundle_data(b) for b in bundles]
    comments = "".join(f"# {comment(line)}".rstrip() + "\n" for line in header)
    return comments + ("\n" if comments else "") + tomli_w.dumps(data)


def dump(path: str, bundles: Iterable[Bundle], director: Optional[DirectorSettings] = None) -> None:
    """Write a configuration file (see :func:`dumps`)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(bundles, director))
