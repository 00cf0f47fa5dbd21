"""IPVS fwmark virtual services through ``ipvsadm`` (argv lists, never a shell).

Text format: the one ``ipvsadm -S -n`` prints and ``ipvsadm -R`` reads (ipvsadm 1.31)::

    -A -f 80 -s wlc -p 300
    -a -f 80 -r 10.0.0.11:0 -g -w 1
    -A -f 80 -6 -s wlc -p 300 -M 64
    -a -f 80 -6 -r [2001:db8::11]:0 -i -w 1 --tun-type ipip

``-M`` only with ``-p`` and not at its default (v4 dotted netmask, v6 prefix length).
``ipvsadm -S`` never prints the ``-x``/``-y`` thresholds: the rendered text adds them
(``ipvsadm -R`` takes them) and :meth:`Ipvs.read` reads them from ``ipvsadm -L -n --thresholds``.
IPVS has no transactions: :meth:`Ipvs.plan` is a diff whose steps carry their inverses, and
:meth:`Ipvs.apply` undoes its done steps when one fails, or returns their undo commands.
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Callable, Iterable, Sequence
from typing import Optional, Union

import attrs

from lvsfw.backends.base import Change, ServiceHalf, ServiceKey, ServiceLive
from lvsfw.backends.ipvsdump import Dump, parse_dump, parse_thresholds
from lvsfw.command import TOOL_PATH, run
from lvsfw.enums import Family, Forwarding, IPAddress
from lvsfw.errors import (
    BackendUnavailable,
    CommandFailed,
    ConflictError,
    LvsfwError,
    add_note,
)
from lvsfw.model import RealServer, VirtualService
from lvsfw.rules import FwmarkService, Specification

INSTALL_HINT = "apt-get install ipvsadm"
#: ipvsadm's messages when the kernel has no IPVS (module missing or not loadable).
NO_SCHEDULER = "Scheduler or persistence engine not found"
NO_IPVS = ("Protocol not available", "Can't initialize ipvs", "Module ip_vs not found")

#: A service lvsfw may touch: (family, mark), or a bare mark meaning both families.
OwnedLike = Union[tuple[Family, int], int]
Key = tuple[Family, int]
Argv = tuple[str, ...]
Runner = Callable[[Sequence[str]], str]
Plan = list[list[str]]
SpecLike = Union[Specification, Iterable[FwmarkService]]


def canonical(service: FwmarkService) -> FwmarkService:
    """``service`` as the kernel keeps it (see :meth:`VirtualService.for_family`)."""
    return attrs.evolve(service, service=service.service.for_family(service.family))


@attrs.frozen
class Step:
    """One ipvsadm call (``argv`` without the program) and the calls undoing it."""

    argv: Argv
    undo: tuple[Argv, ...]


def _key_args(family: Family, mark: int) -> Argv:
    return ("-f", str(mark), "-6") if family == Family.IPV6 else ("-f", str(mark))


def _service_args(family: Family, vs: VirtualService) -> Argv:
    args = ["-s", vs.scheduler.value]
    if vs.persistence is not None:
        args += ["-p", str(vs.persistence)]
        if family == Family.IPV4 and vs.persistence_netmask != 32:
            net = ipaddress.IPv4Network(f"0.0.0.0/{vs.persistence_netmask}")
            args += ["-M", str(net.netmask)]
        elif family == Family.IPV6 and vs.persistence_prefix != 128:
            args += ["-M", str(vs.persistence_prefix)]
    return tuple(args)


def _address(address: IPAddress) -> str:
    return f"[{address}]:0" if address.version == 6 else f"{address}:0"


def _server_args(server: RealServer, thresholds: bool) -> Argv:
    """``-r ADDR:0 -g -w W`` then ``-x``/``-y`` (when set, or always if ``thresholds``)."""
    limits = (("-x", server.upper_threshold), ("-y", server.lower_threshold))
    extra = [arg for flag, n in limits if thresholds or n for arg in (flag, str(n))]
    head = ("-r", _address(server.address), server.forwarding.ipvsadm_flag)
    return (*head, "-w", str(server.weight), *extra)


def _sorted(services: Iterable[FwmarkService]) -> list[FwmarkService]:
    """In ``ipvsadm -S`` order: by mark, IPv4 before IPv6."""
    return sorted(services, key=lambda s: (s.mark, s.family))


def render_services(services: Iterable[FwmarkService]) -> str:
    """``ipvsadm -R`` text for ``services``, as ``ipvsadm -S -n`` prints them."""
    lines = []
    for fs in _sorted(canonical(s) for s in services):
        key = _key_args(fs.family, fs.mark)
        lines.append(("-A", *key, *_service_args(fs.family, fs.service)))
        for server in fs.service.real_servers:
            args = _server_args(server, thresholds=False)
            tun = ("--tun-type", "ipip") if server.forwarding == Forwarding.TUNNEL else ()
            lines.append(("-a", *key, *args[:5], *tun, *args[5:]))
    return "".join(" ".join(line) + "\n" for line in lines)


def _owned(owned: Iterable[OwnedLike]) -> set[Key]:
    """(family, mark) pairs; a bare mark stands for both families."""
    pairs = (item if isinstance(item, tuple) else (f, item) for item in owned for f in Family)
    return {(Family.parse(f, "owned family"), int(m)) for f, m in pairs}


def _add_steps(fs: FwmarkService) -> list[Step]:
    key = _key_args(fs.family, fs.mark)
    steps = [Step(("-A", *key, *_service_args(fs.family, fs.service)), (("-D", *key),))]
    for server in fs.service.real_servers:
        steps.append(_add_server(key, server))
    return steps


def _add_server(key: Argv, server: RealServer) -> Step:
    remove = ("-d", *key, "-r", _address(server.address))
    return Step(("-a", *key, *_server_args(server, False)), (remove,))


def _edit_server(key: Argv, old: RealServer, new: RealServer) -> Step:
    return Step(("-e", *key, *_server_args(new, True)), (("-e", *key, *_server_args(old, True)),))


def _edit_steps(old: FwmarkService, new: FwmarkService) -> list[Step]:
    key = _key_args(new.family, new.mark)
    steps = []
    before, after = _service_args(old.family, old.service), _service_args(new.family, new.service)
    if before != after:
        steps.append(Step(("-E", *key, *after), (("-E", *key, *before),)))
    was = {s.address: s for s in old.service.real_servers}
    now = {s.address: s for s in new.service.real_servers}
    steps += [_add_server(key, s) for a, s in now.items() if a not in was]
    steps += [_edit_server(key, was[a], s) for a, s in now.items() if a in was and s != was[a]]
    adds = [_add_server(key, s) for a, s in was.items() if a not in now]
    steps += [Step(add.undo[0], (add.argv,)) for add in adds]  # deletes
    return steps


def _delete_step(fs: FwmarkService) -> Step:
    key = _key_args(fs.family, fs.mark)
    return Step(("-D", *key), tuple(s.argv for s in _add_steps(fs)))


def diff(live: Dump, services: Iterable[FwmarkService], owned: Iterable[OwnedLike]) -> list[Step]:
    """The steps turning ``live`` into ``services``, touching only ``owned`` (family, mark)s.

    Raises :class:`ConflictError` when a wanted service exists but is not owned, or when an
    owned service uses options lvsfw does not model (changing it would lose them).
    """
    mine = _owned(owned)
    want = {(s.family, s.mark): canonical(s) for s in services}
    have = {(s.family, s.mark): s for s in live.services}
    for key in sorted(want.keys() | mine):
        if key in live.unmodelled:
            why = f"{live.unmodelled[key]}, which lvsfw does not model; change it by hand"
        elif key in want and key in have and key not in mine:
            why = "is not lvsfw's and lvsfw never changes foreign services (or pass it as owned)"
        else:
            continue
        raise ConflictError(f"IPVS service fwmark {key[1]} ({key[0]}) {why}", str(key[1]))
    steps: list[Step] = []
    for fs in _sorted(want.values()):
        old = have.get((fs.family, fs.mark))
        steps += _add_steps(fs) if old is None else _edit_steps(old, fs)
    for fs in _sorted(have.values()):
        if (fs.family, fs.mark) in mine and (fs.family, fs.mark) not in want:
            steps.append(_delete_step(fs))
    return steps


def _services(spec: SpecLike) -> frozenset[FwmarkService]:
    return spec.services if isinstance(spec, Specification) else frozenset(spec)


class Ipvs(ServiceHalf):
    """IPVS fwmark services through ``ipvsadm``.

    ``ipvsadm`` is the program to run (a path, so tests can use a double); ``runner``, if
    given, replaces :func:`lvsfw.command.run` and receives full argv lists.
    """

    name = "ipvs"

    def __init__(
        self, netns: str | None = None, ipvsadm: str = "ipvsadm", runner: Runner | None = None
    ) -> None:
        super().__init__(netns)
        self.ipvsadm = ipvsadm
        self.runner = runner

    @classmethod
    def holding(cls, argument: str, netns: Optional[str], ipvsadm: str) -> Ipvs:
        """The ipvsadm half running ``ipvsadm`` in ``netns``."""
        return cls(netns=netns, ipvsadm=ipvsadm)

    @classmethod
    def available(cls) -> None:
        """Raise :class:`BackendUnavailable` if ``ipvsadm`` is not installed."""
        if shutil.which("ipvsadm", path=TOOL_PATH) is None:
            raise BackendUnavailable(f"ipvsadm not found; {INSTALL_HINT}")

    def render_spec(self, spec: Specification) -> str:
        """``ipvsadm -R`` text for the services of ``spec`` (``ipvsadm -S -n`` form)."""
        return render_services(spec.services)

    def parse(self, text: str) -> frozenset[FwmarkService]:
        """The fwmark services lvsfw can model in ``ipvsadm -S`` text (see :func:`parse_dump`)."""
        return parse_dump(text).services

    def run(self, args: Sequence[str], stdin: str | None = None) -> str:
        """Run ``ipvsadm args`` (in ``self.netns``) and return its output.

        Raises :class:`BackendUnavailable` when ipvsadm is missing ("ipvsadm not found;
        apt-get install ipvsadm") or the kernel has no IPVS, else :class:`CommandFailed`.
        """
        argv = [self.ipvsadm, *args]
        try:
            if self.runner is not None:
                return self.runner(argv)
            return run(argv, netns=self.netns, stdin=stdin, install_hint=INSTALL_HINT)
        except CommandFailed as exc:
            if any(text in exc.stderr for text in NO_IPVS):
                raise BackendUnavailable(
                    f"the kernel has no IPVS ({exc.stderr.strip().splitlines()[0]}); load it "
                    "with 'modprobe ip_vs' (CONFIG_IP_VS) in the network namespace's host"
                ) from exc
            if NO_SCHEDULER in exc.stderr and "-s" in args:
                scheduler = args[list(args).index("-s") + 1]
                add_note(
                    exc,
                    f"this kernel has no ip_vs_{scheduler} module (CONFIG_IP_VS_"
                    f"{scheduler.upper()}); pick another scheduler or a newer kernel",
                )
            raise

    def read_dump(self) -> Dump:
        """The live IPVS table, thresholds included (two reads: ``-S`` and ``--thresholds``)."""
        dump = parse_dump(self.run(["-S", "-n"]))
        limits = parse_thresholds(self.run(["-L", "-n", "--thresholds"]))
        services = set()
        for fs in dump.services:
            found = limits.get((fs.family, fs.mark), {})
            limit = {
                a: {"upper_threshold": u, "lower_threshold": lo} for a, (u, lo) in found.items()
            }
            servers = [attrs.evolve(s, **limit.get(s.address, {})) for s in fs.service.real_servers]
            services.add(attrs.evolve(fs, service=attrs.evolve(fs.service, real_servers=servers)))
        return attrs.evolve(dump, services=frozenset(services))

    def read(self) -> frozenset[FwmarkService]:
        """The live fwmark services lvsfw can model (foreign ones: :meth:`read_dump`)."""
        return self.read_dump().services

    def plan(self, spec: SpecLike, owned: Iterable[OwnedLike], live: Dump | None = None) -> Plan:
        """The ipvsadm argv lists :meth:`apply` would run (``live``: a snapshot, else read)."""
        steps = diff(self.read_dump() if live is None else live, _services(spec), owned)
        return [[self.ipvsadm, *step.argv] for step in steps]

    def apply(self, spec: SpecLike, owned: Iterable[OwnedLike]) -> Plan:
        """Make the live services equal ``spec`` for every owned or wanted (family, mark).

        Returns the argv lists undoing what was done (pass them to :meth:`undo`). If a step
        fails, the steps already done are undone and the error is re-raised.
        """
        change = Steps(self.ipvsadm, tuple(diff(self.read_dump(), _services(spec), owned)))
        self.commit(change)
        return [[self.ipvsadm, *argv] for argv in _inverse(change.steps)]

    # -- the contract (lvsfw.backends.base.ServiceHalf) ------------------------------------

    def observe(self, keys: frozenset[ServiceKey]) -> Dump:
        """The live table (:meth:`read_dump`); not read at all when lvsfw neither owns nor
        wants a service (a marks-only state needs no IPVS on the host)."""
        return self.read_dump() if keys else Dump(frozenset())

    def diff(
        self, spec: Specification, live: ServiceLive, owned: frozenset[ServiceKey]
    ) -> tuple[Optional[Steps], Optional[Steps]]:
        """(adds and edits, run before the marks; deletions of whole services, after)."""
        steps = diff(self.own(live, Dump), spec.services, owned)
        first = tuple(s for s in steps if s.argv[0] != "-D")
        last = tuple(s for s in steps if s.argv[0] == "-D")
        return (Steps(self.ipvsadm, first) if first else None), (
            Steps(self.ipvsadm, last) if last else None
        )

    def commit(self, change: Change) -> None:
        """Run ``change``'s steps; if one fails, undo the ones done, then raise."""
        done: list[Step] = []
        try:
            for step in self.own(change, Steps).steps:
                self.run(step.argv)
                done.append(step)
        except LvsfwError as exc:
            for failure in self._undo(_inverse(done)):
                add_note(exc, f"rollback step failed: {failure}")
            raise

    def remove(self, owned: Iterable[OwnedLike]) -> Plan:
        """Delete the live services of ``owned`` (family, mark)s; return the undo argv lists."""
        return self.apply(frozenset(), owned)

    def undo(self, commands: Iterable[Sequence[str]]) -> None:
        """Run undo ``commands`` (full argv lists from :meth:`apply`), every one of them even
        after a failure; then raise the first failure."""
        for failure in self._undo(tuple(command[1:]) for command in commands)[:1]:
            raise failure

    def _undo(self, commands: Iterable[Argv]) -> list[LvsfwError]:
        failures: list[LvsfwError] = []
        for argv in commands:
            try:
                self.run(argv)
            except LvsfwError as exc:
                failures.append(exc)
        return failures


@attrs.frozen
class Steps:
    """ipvsadm calls as one change (:class:`lvsfw.backends.base.Change`): ``str()`` is the
    argv lines, ``inverse`` the calls undoing them, in reverse order."""

    ipvsadm: str
    steps: tuple[Step, ...]

    @property
    def inverse(self) -> Steps:
        """The calls undoing these."""
        undo = [Step(argv, ()) for argv in _inverse(self.steps)]
        return Steps(self.ipvsadm, tuple(undo))

    def __str__(self) -> str:
        return "".join(" ".join((self.ipvsadm, *s.argv)) + "\n" for s in self.steps)


def _inverse(done: Sequence[Step]) -> list[Argv]:
    return [argv for step in reversed(done) for argv in step.undo]
