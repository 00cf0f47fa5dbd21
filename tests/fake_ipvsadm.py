#!/usr/bin/env python3
"""A test double of ``ipvsadm`` 1.31 keeping the IPVS table in a JSON file.

Written from ipvsadm's own printf formats and libipvs' error strings, independently of
lvsfw's renderer, so tests comparing the two are not tautological.

State file: ``$FAKE_IPVSADM_STATE`` (JSON). Keys besides the table:

- ``fail_at``: N -- the Nth *mutating* call (-A -E -D -a -e -d -C -R, counted from 1 over the
  file's life) fails once with ``fail_stderr`` (default "Memory allocation problem") and
  exit status ``fail_rc`` (default 255). ``$FAKE_IPVSADM_FAIL_AT`` overrides it.
- ``absent``: true -- every call fails like a kernel without IPVS.
- ``calls``: the mutating calls so far; ``log``: the argv of every successful mutating call.

Supported: -A -E -D -a -e -d -C -R, -S [-n], -L -n [--thresholds | --stats [--exact]]; services
-f MARK [-6],
-t/-u/--sctp-service ADDR:PORT (to play foreign services); -s -p -M -r -g -m -i -w -x -y
--tun-type. lvsfw's commands go through ``sh`` with a fixed environment, so use
:func:`install`: it writes a wrapper executable that sets ``$FAKE_IPVSADM_STATE``.

Traffic: a real server's ``active``/``inactive`` connections and ``stats`` (``conns``,
``inpkts``, ``outpkts``, ``inbytes``, ``outbytes``) are 0 until :func:`traffic` sets them; a
service's stats are the sums over its real servers (as the kernel's are, for fwmark services
whose real servers were all there from the start).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

SCHEDULERS = {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo"}
SCHEDULERS |= {"ovf", "twos"}
MUTATING = {"-A", "-E", "-D", "-a", "-e", "-d", "-C", "-R"}
NO_IPVS = (
    "Can't initialize ipvs: Protocol not available\n"
    "Are you sure that IP Virtual Server is built in the kernel or as module?\n"
)
PROTO = {"-t": "TCP", "-u": "UDP", "--sctp-service": "SCTP"}
SWITCH = {"-t": "-t", "-u": "-u", "--sctp-service": "--sctp-service"}
WITH_VALUE = {"-f", "-t", "-u", "--sctp-service", "-s", "-M", "-r", "-w", "-x", "-y"}
WITH_VALUE |= {"--tun-type"}


class Failure(Exception):
    """An ipvsadm error: message and exit status."""

    def __init__(self, message: str, rc: int = 255) -> None:
        super().__init__(message)
        self.rc = rc


def install(directory: Path, **state: Any) -> Path:
    """Write ``directory/ipvsadm`` (a wrapper running this double) and its state file
    (``directory/ipvs.json``, seeded with ``state``); return the wrapper's path."""
    directory.mkdir(parents=True, exist_ok=True)
    state_file = directory / "ipvs.json"
    state_file.write_text(json.dumps({"services": [], "calls": 0, "log": [], **state}))
    wrapper = directory / "ipvsadm"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"FAKE_IPVSADM_STATE={shlex.quote(str(state_file))} "
        f"exec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} "
        '"$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def state_of(wrapper: Path) -> dict[str, Any]:
    """The state file of an :func:`install` ed double."""
    data: dict[str, Any] = json.loads((wrapper.parent / "ipvs.json").read_text())
    return data


def update(wrapper: Path, **changes: Any) -> None:
    """Change keys (``fail_at``, ``absent``, ``services``...) of an installed double's state."""
    state = state_of(wrapper)
    state.update(changes)
    (wrapper.parent / "ipvs.json").write_text(json.dumps(state))


STATS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")


def traffic(
    wrapper: Path, mark: int, server: str, *, af: int = 4, active: int = 0, inactive: int = 0,
    **stats: int,
) -> None:
    """Give real server ``server`` of fwmark service ``mark`` (family ``af``) connections and
    counters (``conns=..., inpkts=...``: see :data:`STATS`)."""
    unknown = set(stats) - set(STATS)
    if unknown:
        raise ValueError(f"unknown counters {sorted(unknown)}; known: {STATS}")
    data = state_of(wrapper)
    service = find(data["services"], {"kind": "-f", "mark": mark, "af": af})
    if service is None:
        raise LookupError(f"no fwmark service {mark} (IPv{af})")
    dest = next((d for d in service["dests"] if d["addr"] == server), None)
    if dest is None:
        raise LookupError(f"fwmark service {mark} has no real server {server}")
    dest.update(active=active, inactive=inactive, stats={k: stats.get(k, 0) for k in STATS})
    (wrapper.parent / "ipvs.json").write_text(json.dumps(data))


def table(wrapper: Path) -> str:
    """The double's table as ``ipvsadm -S -n`` prints it (for before/after comparisons)."""
    return save(state_of(wrapper)["services"])


# ---------------------------------------------------------------- argument parsing


def parse_args(argv: list[str]) -> dict[str, Any]:
    """ipvsadm's options into a dict; commands under "cmd"."""
    opts: dict[str, Any] = {"switches": set()}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in {"-Sn", "-Ln", "-nL", "-nS"}:
            opts["cmd"] = "-" + arg.replace("-", "").replace("n", "")
            opts["switches"].add("-n")
        elif arg in MUTATING or arg in {"-S", "-L", "-l"}:
            if "cmd" in opts:
                raise Failure("multiple commands specified", 2)
            opts["cmd"] = "-L" if arg == "-l" else arg
        elif arg == "-p":
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                opts["-p"] = argv[i + 1]
                i += 1
            else:
                opts["-p"] = "300"
        elif arg in WITH_VALUE:
            if i + 1 >= len(argv):
                raise Failure(f"option {arg} needs an argument", 2)
            opts[arg] = argv[i + 1]
            i += 1
        elif arg in {"-6", "-g", "-m", "-i", "-n", "--thresholds", "--stats", "--exact"}:
            opts["switches"].add(arg)
        else:
            raise Failure(f"invalid option `{arg}'", 2)
        i += 1
    if "cmd" not in opts:
        raise Failure("no command specified", 2)
    return opts


def number(text: str, low: int, high: int, what: str) -> int:
    """``text`` as an integer low..high, else ipvsadm's "illegal ..." error."""
    try:
        value = int(text, 10)
    except ValueError:
        raise Failure(f"illegal {what} specified", 2) from None
    if not low <= value <= high:
        raise Failure(f"illegal {what} specified", 2)
    return value


def addr_port(text: str, port_required: bool) -> tuple[int, str, int]:
    """(family, address, port) from ``A.B.C.D[:P]`` or ``[v6][:P]``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.partition(":")
    if port_required and not port:
        raise Failure("illegal virtual server address[:port] specified", 2)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise Failure(f"illegal address {text!r} specified", 2) from None
    return address.version, str(address), number(port or "0", 0, 65535, "port")


def service_key(opts: dict[str, Any]) -> dict[str, Any]:
    """The service the options name (fwmark or address:port)."""
    if "-f" in opts:
        mark = number(opts["-f"], 1, 2**32 - 1, "fwmark value")
        return {"kind": "-f", "mark": mark, "af": 6 if "-6" in opts["switches"] else 4}
    for flag in ("-t", "-u", "--sctp-service"):
        if flag in opts:
            af, addr, port = addr_port(opts[flag], True)
            return {"kind": flag, "mark": 0, "af": af, "addr": addr, "port": port}
    raise Failure("You need to supply the 'service-address' option", 2)


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two services have the same key."""
    fields = ("kind", "mark", "af", "addr", "port")
    return all(a.get(f) == b.get(f) for f in fields)


# ---------------------------------------------------------------- the "kernel"


def find(services: list[dict[str, Any]], key: dict[str, Any]) -> dict[str, Any] | None:
    """The service with ``key`` in the table."""
    return next((s for s in services if same(s, key)), None)


def service_settings(opts: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    """Scheduler and persistence of -A/-E (unspecified: defaults, as ipvsadm does)."""
    sched = opts.get("-s", "wlc")
    if sched not in SCHEDULERS:
        raise Failure("Scheduler or persistence engine not found")
    timeout = number(opts["-p"], 1, 86400 * 31, "timeout value") if "-p" in opts else None
    netmask: Any = "255.255.255.255" if key["af"] == 4 else 128
    if "-M" in opts:
        if key["af"] == 6:
            netmask = number(opts["-M"], 1, 128, "ipv6 netmask")
        else:
            parts = opts["-M"].split(".")
            if len(parts) != 4:
                raise Failure("illegal virtual server persistent mask specified", 2)
            netmask = str(ipaddress.IPv4Address(opts["-M"]))
    return {"sched": sched, "timeout": timeout, "netmask": netmask}


def dest_settings(opts: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    """The real server of -a/-e (unspecified: defaults, as ipvsadm does)."""
    af, addr, port = addr_port(opts.get("-r", ""), False)
    if service["kind"] != "-f" and port == 0:
        port = service["port"]
    fwd = next((f for f in ("-m", "-i", "-g") if f in opts["switches"]), "-g")
    tun = opts.get("--tun-type", "ipip")
    if tun not in {"ipip", "gue", "gre"}:
        raise Failure(f"invalid tunnel type `{tun}'", 2)
    return {
        "af": af,
        "addr": addr,
        "port": port,
        "fwd": fwd,
        "weight": number(opts.get("-w", "1"), 0, 65535, "weight"),
        "x": number(opts.get("-x", "0"), 0, 2**31 - 1, "upper threshold"),
        "y": number(opts.get("-y", "0"), 0, 2**31 - 1, "lower threshold"),
        "tun": tun,
    }


def execute(opts: dict[str, Any], services: list[dict[str, Any]], stdin: str) -> str:
    """Apply one command to ``services`` (in place); return what it prints."""
    cmd = opts["cmd"]
    if cmd == "-S":
        return save(services)
    if cmd == "-L" and "--stats" in opts["switches"]:
        return stats_listing(services, "--exact" in opts["switches"])
    if cmd == "-L":
        return listing(services, "--thresholds" in opts["switches"])
    if cmd == "-C":
        services.clear()
        return ""
    if cmd == "-R":
        for line in stdin.splitlines():
            if line.strip():
                execute(parse_args(shlex.split(line)), services, "")
        return ""
    key = service_key(opts)
    current = find(services, key)
    if cmd in {"-A", "-E", "-D"}:
        service_command(cmd, opts, services, key, current)
    elif current is None:
        raise Failure("Service not defined")
    else:
        dest_command(cmd, opts, current)
    return ""


def service_command(
    cmd: str,
    opts: dict[str, Any],
    services: list[dict[str, Any]],
    key: dict[str, Any],
    current: dict[str, Any] | None,
) -> None:
    """-A, -E, -D on the table."""
    if cmd == "-A":
        if current is not None:
            raise Failure("Service already exists")
        services.append({**key, **service_settings(opts, key), "dests": []})
    elif current is None:
        raise Failure("No such service")
    elif cmd == "-E":
        current.update(service_settings(opts, key))
    else:
        services.remove(current)


def dest_command(cmd: str, opts: dict[str, Any], current: dict[str, Any]) -> None:
    """-a, -e, -d on one service."""
    dest = dest_settings(opts, current)
    match = next((d for d in current["dests"] if d["addr"] == dest["addr"]), None)
    if cmd == "-a" and match is not None:
        raise Failure("Destination already exists")
    if cmd in {"-e", "-d"} and match is None:
        raise Failure("No such destination")
    if match is not None:
        current["dests"].remove(match)
        if cmd == "-e":  # the kernel keeps a real server's connections and counters
            dest.update({k: match[k] for k in ("active", "inactive", "stats") if k in match})
    if cmd != "-d":
        current["dests"].append(dest)


# ---------------------------------------------------------------- printing


def _sorted(services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(s: dict[str, Any]) -> tuple[Any, ...]:
        addr = int(ipaddress.ip_address(s["addr"])) if s.get("addr") else 0
        # libipvs compares marks as a signed difference: 3000000000 sorts before 80
        return (_signed(s["mark"]), s["af"], s["kind"], addr, s.get("port", 0))

    return sorted(services, key=key)


def _dests(service: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(service["dests"], key=lambda d: (int(ipaddress.ip_address(d["addr"])), d["port"]))


def _signed(mark: int) -> int:
    return mark - 2**32 if mark >= 2**31 else mark  # ipvsadm prints the mark with %d


def _host(af: int, addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if af == 6 else f"{addr}:{port}"


def save(services: list[dict[str, Any]]) -> str:
    """``ipvsadm -S -n``: printf("-A %s -s %s") ... printf("-a %s -r %s %s -w %d")."""
    out = []
    for s in _sorted(services):
        if s["kind"] == "-f":
            name = f"-f {_signed(s['mark'])}" + (" -6" if s["af"] == 6 else "")
        else:
            name = f"{SWITCH[s['kind']]} {_host(s['af'], s['addr'], s['port'])}"
        line = f"-A {name} -s {s['sched']}"
        if s["timeout"] is not None:
            line += f" -p {s['timeout']}"
            if s["netmask"] not in ("255.255.255.255", 128):
                line += f" -M {s['netmask']}"
        out.append(line)
        for d in _dests(s):
            line = (
                f"-a {name} -r {_host(d['af'], d['addr'], d['port'])} {d['fwd']} -w {d['weight']}"
            )
            if d["fwd"] == "-i":
                line += f" --tun-type {d['tun']}"
            out.append(line)
    return "".join(line + "\n" for line in out)


def listing(services: list[dict[str, Any]], thresholds: bool) -> str:
    """``ipvsadm -L -n [--thresholds]``."""
    out = ["IP Virtual Server version 1.2.1 (size=4096)"]
    if thresholds:
        head = "%-33s %-10s %-10s %-10s %-10s" % (  # noqa: UP031 - ipvsadm's own format
            "Prot LocalAddress:Port",
            "Uthreshold",
            "Lthreshold",
            "ActiveConn",
            "InActConn",
        )
        out += [head, "  -> RemoteAddress:Port"]
    else:
        out += [
            "Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
        ]
    names = {"-g": "Route", "-m": "Masq", "-i": "Tunnel"}
    for s in _sorted(services):
        if s["kind"] == "-f":
            name = f"FWM  {_signed(s['mark'])}" + (" IPv6" if s["af"] == 6 else "")
        else:
            name = f"{PROTO[s['kind']]}  {_host(s['af'], s['addr'], s['port'])}"
        line = f"{name} {s['sched']}"
        if s["timeout"] is not None:
            line += f" persistent {s['timeout']}"
            if s["netmask"] not in ("255.255.255.255", 128):
                line += f" mask {s['netmask']}"
        out.append(line)
        for d in _dests(s):
            host = _host(d["af"], d["addr"], d["port"])
            act, inact = d.get("active", 0), d.get("inactive", 0)
            if thresholds:
                out.append(f"  -> {host:<28} {d['x']:<10} {d['y']:<10} {act:<10} {inact:<10}")
            else:
                fwd = names[d["fwd"]]
                out.append(f"  -> {host:<28} {fwd:<7} {d['weight']:<6} {act:<10} {inact:<10}")
    return "".join(line + "\n" for line in out)


def largenum(n: int, exact: bool) -> str:
    """ipvsadm's print_largenum: ``%*llu`` (at least 9 wide) with --exact, else K/M/G/T."""
    if exact:
        text = str(n)
        return text.rjust(9 if len(text) <= 8 else len(text) + 1)
    for limit, divisor, unit in (
        (10**8, 1, ""),
        (10**9, 10**3, "K"),
        (10**11, 10**6, "M"),
        (10**14, 10**9, "G"),
    ):
        if n < limit:
            return f"{n // divisor:>{9 - len(unit)}}{unit}"
    return f"{n // 10**12:>8}T"


def stats_listing(services: list[dict[str, Any]], exact: bool) -> str:
    """``ipvsadm -L -n --stats [--exact]``: printf("%-33s") then five print_largenum."""
    out = [
        "IP Virtual Server version 1.2.1 (size=4096)",
        "%-33s %8s %8s %8s %8s %8s"  # noqa: UP031 - ipvsadm's own format
        % ("Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"),
        "  -> RemoteAddress:Port",
    ]
    for s in _sorted(services):
        if s["kind"] == "-f":
            name = f"FWM  {_signed(s['mark'])}" + (" IPv6" if s["af"] == 6 else "")
        else:
            name = f"{PROTO[s['kind']]}  {_host(s['af'], s['addr'], s['port'])}"
        dests = _dests(s)
        totals = [sum(d.get("stats", {}).get(k, 0) for d in dests) for k in STATS]
        out.append(f"{name:<33}" + "".join(largenum(n, exact) for n in totals))
        for d in dests:
            counts = [d.get("stats", {}).get(k, 0) for k in STATS]
            host = _host(d["af"], d["addr"], d["port"])
            out.append(f"  -> {host:<28}" + "".join(largenum(n, exact) for n in counts))
    return "".join(line + "\n" for line in out)


# ---------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    """Run one ipvsadm invocation against the state file."""
    path = Path(os.environ["FAKE_IPVSADM_STATE"])
    state = json.loads(path.read_text())
    if state.get("absent"):
        sys.stderr.write(NO_IPVS)
        return 2
    try:
        opts = parse_args(argv)
        if opts["cmd"] in MUTATING:
            state["calls"] = state.get("calls", 0) + 1
            fail_at = os.environ.get("FAKE_IPVSADM_FAIL_AT") or state.get("fail_at")
            if fail_at is not None and int(fail_at) == state["calls"]:
                message = state.get("fail_stderr", "Memory allocation problem")
                raise Failure(message, state.get("fail_rc", 255))
        stdin = sys.stdin.read() if opts["cmd"] == "-R" else ""
        output = execute(opts, state["services"], stdin)
    except Failure as exc:
        path.write_text(json.dumps(state))  # the call count; -R keeps the lines done
        sys.stderr.write(f"{exc}\n")
        return exc.rc
    if opts["cmd"] in MUTATING:
        state["log"].append(argv)
        path.write_text(json.dumps(state))
    sys.stdout.write(output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
