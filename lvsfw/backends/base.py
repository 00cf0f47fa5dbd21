"""What every backend offers: render (pure), and for live backends apply, read and remove."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any, ClassVar, Optional

import attrs

from lvsfw.enums import Family, IPAddress, Protocol
from lvsfw.model import Bundle
from lvsfw.rules import FwmarkService, MarkRule, Specification, specify


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


class PacketFilter(Backend):
    """A backend that marks packets: parses its own text back and drives a live kernel.

    Kernel objects lvsfw creates besides its rules are named by ownership identifiers:
    ``"ipset:NAME"`` for a set, ``"table:ip mangle"``/``"table:ip6 mangle"`` for an nf_tables
    table lvsfw created. :attr:`owned` is what the state file records; :meth:`creates` what a
    change may create (recorded as pending before it is sent); :meth:`objects` which of lvsfw's
    objects exist (recorded after a commit).
    """

    def __init__(self, netns: str | None = None) -> None:
        super().__init__(netns)
        #: The ownership identifiers the state file records (set by the Director before any
        #: call). None: no record (a state file from before ownership was recorded); a backend
        #: then owns only what has lvsfw's exact structure.
        self.owned: Optional[frozenset[str]] = None

    def objects(self, live: Any = None) -> frozenset[str]:
        """The identifiers of lvsfw's own objects that exist in ``live`` (a live state this
        backend read; None: read now). The default: none (nothing to record)."""
        return frozenset()

    def creates(self, change: Any) -> frozenset[str]:
        """The identifiers of the objects ``change`` (from ``transaction(spec, live)``) may
        create, to record as pending before it is sent. The default: none."""
        return frozenset()

    @abc.abstractmethod
    def parse(self, text: str) -> frozenset[MarkRule]:
        """The mark rules lvsfw owns in ``text`` (rendered or dumped by the kernel tool)."""

    @abc.abstractmethod
    def check(self, spec: Specification) -> None:
        """Have the kernel validate loading ``spec`` without changing anything.

        Raises :class:`lvsfw.errors.CommandFailed` carrying the kernel tool's own message.
        """

    @abc.abstractmethod
    def apply(self, spec: Specification) -> None:
        """Make lvsfw's own rules in the kernel equal ``spec``, atomically where the kernel
        allows (nftables: one transaction; iptables: one restore per table and family).

        Writes nothing when the live rules already equal ``spec``.
        """

    @abc.abstractmethod
    def read(self) -> frozenset[MarkRule]:
        """The mark rules lvsfw owns in the live kernel."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Remove everything this backend owns in the kernel, and nothing else."""

    def snapshot(self) -> Specification:
        """The live rules as a specification :meth:`apply` can restore (for undo)."""
        return Specification(self.read(), frozenset())

    def findings(self, spec: Specification) -> list[Finding]:
        """Departures from lvsfw's layout that a rule diff cannot show.

        lvsfw's own table or chain damaged, its hook or jump gone, a foreign rule in the same
        hook that overrides (or skips) its marks. The default finds nothing.
        """
        return []

    def boot_files(self, spec: Specification) -> dict[str, str]:
        """File name -> content of what a boot script loads to restore ``spec``."""
        return {f"lvsfw-{self.name}.rules": self.render_spec(spec)}


class ServiceBackend(Backend):
    """A backend holding IPVS fwmark services."""

    @abc.abstractmethod
    def parse(self, text: str) -> frozenset[FwmarkService]:
        """The fwmark services in ``text`` (rendered or dumped by the kernel tool)."""
