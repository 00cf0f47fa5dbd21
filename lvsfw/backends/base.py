"""What every backend offers: render (pure), and for live backends apply, read and remove."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import ClassVar, Optional, TypeVar, runtime_checkable
from typing import Protocol as Interface

import attrs

from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.model import Bundle
from lvsfw.rendered import Rendered, part_name
from lvsfw.rules import FwmarkService, MarkRule, Specification, specify

T = TypeVar("T")
#: An IPVS service's key: (family, fwmark).
ServiceKey = tuple[Family, int]


@attrs.frozen
class Finding:
    """A structural departure found in the live kernel.

    ``family``/``vip``/``protocol``/``port`` narrow which bundled packets it affects
    (None: all).
    """

    detail: str
    vip: Optional[IPAddress] = None
    protocol: Optional[Protocol] = None
    port: Optional[int] = None
    family: Optional[Family] = None


class Backend(abc.ABC):
    """A target lvsfw renders bundles to.

    ``netns`` names the network namespace a live backend works in (None: the current one).
    """

    #: The name the registry and ``render(bundles, name)`` know this backend by.
    name: ClassVar[str]

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    @classmethod
    def available(cls) -> None:
        """Raise :class:`lvsfw.errors.BackendUnavailable` saying why this backend cannot run."""
        return  # usable unless a subclass says otherwise

    def render(self, bundles: Iterable[Bundle]) -> str:
        """The text this backend would load for ``bundles`` (conflict-checked first)."""
        return self.render_spec(specify(bundles))

    @abc.abstractmethod
    def render_spec(self, spec: Specification) -> str:
        """The text this backend would load for ``spec``."""

    def own(self, value: object, kind: type[T]) -> T:
        """``value`` if it is this backend's ``kind`` (a Live or Change it made), else a
        :class:`TypeError`: values of one backend mean nothing to another."""
        if not isinstance(value, kind):
            raise TypeError(f"{self.name}: not a {kind.__name__} of this backend: {value!r}")
        return value

    def render_parts(self, spec: Specification) -> Rendered:
        """:meth:`render_spec` as named parts, each one tool's input as is (``str()`` of the
        result is :meth:`render_spec`). The default: one part, named after its loading tool
        (:func:`lvsfw.rendered.part_name`)."""
        return Rendered.single(part_name(self.name), self.render_spec(spec))


@runtime_checkable
class Live(Interface):
    """One read of what lvsfw owns in a packet filter (and what verify must see there)."""

    @property
    def rules(self) -> frozenset[MarkRule]:
        """The mark rules in force."""
        ...


@runtime_checkable
class Change(Interface):
    """A change ready to send, as a value: ``str()`` is the exact script or the argv lines
    that :meth:`PacketFilter.commit` sends; ``inverse`` is the change undoing it."""

    @property
    def inverse(self) -> Change:
        """The change putting back what this one replaces."""
        ...


class PacketFilter(Backend):
    """A backend that marks packets: the contract the Director drives.

    The verbs, in the order an apply uses them (knftables' shape: a change is a value)::

        live = f.observe(fast)          # one read of everything lvsfw owns there
        change = f.diff(spec, live)     # pure; None when nothing is to be written
        f.check(change)                 # the kernel's own dry run
        f.commit(change)                # send it; f.commit(change.inverse) undoes it
        f.findings(spec, live)          # structural departures a rule diff cannot show

    ``Live`` and ``Change`` are per-backend classes behind the protocols above; a backend
    refuses another backend's values (:meth:`own`). :meth:`read`, :meth:`apply` and
    :meth:`snapshot` are built on the verbs. Kernel objects lvsfw creates besides its rules
    are named by ownership identifiers (``"ipset:NAME"``, ``"table:ip mangle"``):
    :attr:`owned` is what the state file records, :meth:`creates` what a change may create
    (recorded as pending before it is sent), :meth:`objects` which of them exist.
    """

    def __init__(self, netns: str | None = None) -> None:
        super().__init__(netns)
        #: The ownership identifiers the state file records (set by the Director before any
        #: call). None: no record (a state file from before ownership was recorded); a backend
        #: then owns only what has lvsfw's exact structure.
        self.owned: Optional[frozenset[str]] = None

    # -- the contract ------------------------------------------------------------------------

    @abc.abstractmethod
    def observe(self, fast: bool = False) -> Live:
        """One read of lvsfw's live state. ``fast``: the backend may trust its own last
        commit while it can prove the kernel unchanged since (drift checks never pass it)."""

    @abc.abstractmethod
    def diff(self, spec: Specification, live: Live) -> Optional[Change]:
        """The change turning ``live`` into ``spec`` (None: nothing to write); pure.

        Raises :class:`lvsfw.errors.ConflictError` when something lvsfw does not own stands
        in the way (a foreign object on one of its names)."""

    @abc.abstractmethod
    def check(self, change: Change) -> None:
        """Have the kernel validate ``change`` without committing anything.

        Raises :class:`lvsfw.errors.CommandFailed` carrying the kernel tool's own message.
        """

    @abc.abstractmethod
    def commit(self, change: Change) -> None:
        """Send ``change``, atomically where the kernel allows."""

    #: Whether :meth:`commit` is one atomic kernel transaction (a rejected one changes
    #: nothing, so the Director may skip the dry run of a change planned on a fresh read).
    atomic: ClassVar[bool] = False

    def cached(self, live: Live) -> bool:
        """Whether ``live`` came from the backend's own last commit, not a read (a dry run of
        a change planned on it is then worth its cost). The default: never."""
        return False

    def findings(
        self, spec: Specification, live: Optional[Live] = None, thorough: Optional[bool] = None
    ) -> list[Finding]:
        """Departures from lvsfw's layout that a rule diff cannot show: its own table or chain
        damaged, its hook or jump gone, a foreign rule that overrides or skips its marks.
        ``live``: as read by :meth:`observe` (None: read now); ``thorough`` (verify): also
        what costs extra reads (default: only when ``live`` is None, so an apply's read
        costs nothing more). The default finds nothing."""
        return []

    @abc.abstractmethod
    def remove(self) -> None:
        """Remove everything this backend owns in the kernel, and nothing else."""

    def objects(self, live: Optional[Live] = None) -> frozenset[str]:
        """The identifiers of lvsfw's own objects that exist in ``live`` (None: as the last
        commit left them, or read now). The default: none (nothing to record)."""
        return frozenset()

    def creates(self, change: Change) -> frozenset[str]:
        """The identifiers of the objects ``change`` may create. The default: none."""
        return frozenset()

    # -- built on the contract -------------------------------------------------------------

    @abc.abstractmethod
    def parse(self, text: str) -> frozenset[MarkRule]:
        """The mark rules lvsfw owns in ``text`` (rendered or dumped by the kernel tool)."""

    @abc.abstractmethod
    def validate(self, spec: Specification) -> None:
        """Have the kernel validate loading ``spec`` whole, without changing anything."""

    def read(self) -> frozenset[MarkRule]:
        """The mark rules lvsfw owns in the live kernel."""
        return self.observe().rules

    def apply(self, spec: Specification) -> None:
        """Make lvsfw's own rules equal ``spec`` (one read, one commit; none when equal)."""
        change = self.diff(spec, self.observe())
        if change is not None:
            self.commit(change)

    def snapshot(self) -> Specification:
        """The live rules as a specification :meth:`apply` can restore."""
        return Specification(self.read(), frozenset())

    def boot_files(self, spec: Specification) -> dict[str, str]:
        """File name -> content of what a boot script loads to restore ``spec``."""
        return {f"lvsfw-{self.name}.rules": self.render_spec(spec)}


class ServiceBackend(Backend):
    """A backend holding IPVS fwmark services."""

    @abc.abstractmethod
    def parse(self, text: str) -> frozenset[FwmarkService]:
        """The fwmark services in ``text`` (rendered or dumped by the kernel tool)."""


@runtime_checkable
class ServiceLive(Interface):
    """One read of the live service table: the fwmark services lvsfw can model."""

    @property
    def services(self) -> frozenset[FwmarkService]:
        """The live fwmark services."""
        ...


class ServiceHalf(ServiceBackend):
    """The IPVS half the Director drives, through the same verbs as :class:`PacketFilter`.

    ``diff`` returns two changes because the order is part of the contract: services are
    added or changed *before* the marks that feed them are written, and removed *after* the
    marks are gone. ``owned`` are the (family, mark) keys the state file records: only those
    are ever changed or removed; a foreign service on a wanted key is a
    :class:`lvsfw.errors.ConflictError` from ``diff``. Removing every owned service is the
    diff to an empty specification.
    """

    #: Whether this half manages anything (False: the marks-only Director).
    manages: ClassVar[bool] = True
    #: Whether real servers come and go by health check (keepalived): verify then reports
    #: an absent configured real server as *down*, not as drift.
    health_checked: ClassVar[bool] = False

    def __init__(self, netns: Optional[str] = None) -> None:
        super().__init__(netns)
        #: What the last commits want the admin to know (keepalived not running...).
        self.notes: list[str] = []

    @property
    def holder(self) -> str:
        """Who holds the services this half makes, as the state file records it: the half's
        name, then ``:`` and what tells two of its kind apart (keepalived: its file)."""
        return self.name

    @classmethod
    def holding(cls, argument: str, netns: Optional[str], ipvsadm: str) -> ServiceHalf:
        """The half whose :attr:`holder` is ``name:argument``: the one that removes what a
        state file says it made (``ipvsadm``: the program reading IPVS, for halves that do)."""
        return cls(netns)

    @abc.abstractmethod
    def observe(self, keys: frozenset[ServiceKey]) -> ServiceLive:
        """One read of the live services (``keys``: the ones lvsfw owns or wants; a half may
        skip the read when there are none)."""

    @abc.abstractmethod
    def diff(
        self, spec: Specification, live: ServiceLive, owned: frozenset[ServiceKey]
    ) -> tuple[Optional[Change], Optional[Change]]:
        """(before the marks, after the marks): the changes turning ``live`` into ``spec``
        for every owned or wanted key."""

    def check(self, change: Change) -> None:
        """Validate ``change`` without sending it (the default: nothing to ask)."""
        return

    def boot_files(self, spec: Specification) -> dict[str, str]:
        """File name -> content of what a boot script loads to restore ``spec``'s services
        (the default: ``ipvsadm-restore`` input; none when marks only)."""
        return {"lvsfw.ipvs": self.render_spec(spec)} if self.manages else {}

    def table(self, live: ServiceLive) -> frozenset[FwmarkService]:
        """The services live in IPVS, as verify compares them (the default: what
        :meth:`observe` read; a half configuring another program reads the kernel here)."""
        return live.services

    def findings(self, spec: Specification, live: ServiceLive) -> list[str]:
        """Departures of the half's own objects that no service comparison shows (a config
        file edited by hand...). The default: none."""
        return []

    @abc.abstractmethod
    def commit(self, change: Change) -> None:
        """Send ``change``; if it fails half-way, undo what it sent, then raise."""
