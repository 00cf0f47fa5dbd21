"""keepalived as the IPVS half: lvsfw owns the marks and one keepalived.conf, keepalived owns
the IPVS services it builds from that file (and health-checks, and fails over by VRRP).

``apply`` renders the file (the whole keepalived.conf of a cluster node, or lvsfw's blocks
under its header line), has the real ``keepalived --config-test`` accept it (in the
Director's namespace, where keepalived looks for the VRRP interface), writes it atomically and
reloads keepalived: ``systemctl reload keepalived`` when systemd runs it, else SIGHUP to the
pid in its pid file (``/run/keepalived.pid``; ``keepalived --namespace NS`` keeps it in
``/run/keepalived/NS/``). keepalived not running is no error: the file waits for it, and
:attr:`KeepalivedRuntime.notes` says so. A file without lvsfw's header line is never
overwritten. ``verify`` reads the live IPVS table (never writes it): real servers a health
check took out are *down*, not drift (:func:`lvsfw.drift.health_drift`). keepalived is
reloaded, never restarted: a service it lost while the file stayed the same (a reload does not
re-add it) is a note asking for a restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from typing import ClassVar, Optional

import attrs

from lvsfw.backends import kaconf
from lvsfw.backends.base import Change, ServiceHalf, ServiceKey, ServiceLive
from lvsfw.backends.ipvs import Ipvs
from lvsfw.backends.keepalived import SCRIPT_SECURITY, Keepalived, builds, parse_blocks
from lvsfw.cluster import Cluster
from lvsfw.command import TOOL_PATH, run
from lvsfw.errors import CommandFailed, ConflictError, LvsfwError, ParseError
from lvsfw.files import write_atomic
from lvsfw.rules import FwmarkService, Specification

#: Where keepalived reads its configuration unless told otherwise.
DEFAULT_CONF = "/etc/keepalived/keepalived.conf"
INSTALL_HINT = "apt-get install keepalived"


@attrs.frozen
class ConfigFile:
    """One read of lvsfw's keepalived.conf: its ``text`` (None: no file) and the
    ``services`` it configures (none when the file is not lvsfw's)."""

    text: Optional[str]
    services: frozenset[FwmarkService] = frozenset()
    #: The fwmark services a running keepalived holds in IPVS now (None: not read —
    #: keepalived not running, or no IPVS to read here).
    table: Optional[frozenset[FwmarkService]] = None


@attrs.frozen
class ConfigWrite:
    """A change of the service half (:class:`lvsfw.backends.base.Change`): ``path`` goes from
    ``old`` to ``new`` text (None: no file). ``str()`` is the text written."""

    path: str
    old: Optional[str]
    new: Optional[str]

    @property
    def inverse(self) -> ConfigWrite:
        """The write putting the old text back."""
        return ConfigWrite(self.path, self.new, self.old)

    def __str__(self) -> str:
        return self.new if self.new is not None else f"# remove {self.path}\n"


def lvsfws(text: str) -> bool:
    """Whether keepalived.conf ``text`` was written by lvsfw (its first line says so)."""
    return text.startswith(kaconf.HEADER)


def default_pid_file(netns: Optional[str]) -> str:
    """keepalived's main pid file: ``/run/keepalived.pid``, or for ``--namespace NS`` the
    one its private /run/keepalived shows the host as ``/run/keepalived/NS/keepalived.pid``."""
    return "/run/keepalived.pid" if netns is None else f"/run/keepalived/{netns}/keepalived.pid"


class KeepalivedRuntime(Keepalived, ServiceHalf):
    """keepalived running the IPVS half from the file ``conf`` lvsfw writes.

    ``cluster``/``node``: render the whole keepalived.conf of that director (VRRP included);
    without them the file holds lvsfw's ``virtual_server`` blocks under its header (keepalived
    may run it alone or ``include`` it). ``keepalived``/``ipvsadm``: the programs to run;
    ``pid_file``: keepalived's main pid file (default: :func:`default_pid_file`).
    """

    name = "keepalived"
    health_checked: ClassVar[bool] = True

    def __init__(
        self,
        netns: Optional[str] = None,
        delay_loop: Optional[int] = None,
        cluster: Optional[Cluster] = None,
        node: Optional[str] = None,
        *,
        conf: str = DEFAULT_CONF,
        keepalived: str = "keepalived",
        ipvsadm: str = "ipvsadm",
        pid_file: Optional[str] = None,
    ) -> None:
        super().__init__(netns, delay_loop, cluster, node)
        self.conf = conf
        self.keepalived = keepalived
        self.ipvs_reader = Ipvs(netns=netns, ipvsadm=ipvsadm)
        self.pid_file = pid_file or default_pid_file(netns)
        self._tested: Optional[str] = None  # the last text keepalived --config-test accepted

    @property
    def holder(self) -> str:
        """``keepalived:`` and the absolute path of the file lvsfw writes."""
        return f"{self.name}:{os.path.abspath(self.conf)}"

    @classmethod
    def holding(cls, argument: str, netns: Optional[str], ipvsadm: str) -> KeepalivedRuntime:
        """keepalived reading ``argument``, lvsfw's file (its default pid file)."""
        return cls(netns, conf=argument, ipvsadm=ipvsadm)

    # -- rendering -------------------------------------------------------------------------

    def render_file(self, spec: Specification) -> str:
        """The whole file lvsfw writes for ``spec``: a cluster node's keepalived.conf, or the
        header line, the script security ``misc`` checks need, and the blocks."""
        if self.cluster is not None and self.node is not None:
            return self.render_spec(spec)
        blocks = self.render_spec(spec)
        head = f"{kaconf.HEADER}; lvsfw rewrites it\n"
        security = SCRIPT_SECURITY if kaconf.runs_scripts(spec) else ""
        return head + security + (f"\n{blocks}" if blocks else "")

    # -- the contract (lvsfw.backends.base.ServiceHalf) ------------------------------------

    def observe(self, keys: frozenset[ServiceKey]) -> ConfigFile:
        """The file as it is now (IPVS itself is keepalived's: :meth:`table` reads it)."""
        try:
            with open(self.conf, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return ConfigFile(None)
        except (OSError, UnicodeDecodeError) as exc:
            raise LvsfwError(f"cannot read {self.conf}: {exc}") from None
        if not lvsfws(text):
            return ConfigFile(text)
        try:
            services = parse_blocks(text)
        except ParseError:
            return ConfigFile(text)  # damaged by hand: rewritten, and verify says so
        return ConfigFile(text, services, self._table() if services else None)

    def _table(self) -> Optional[frozenset[FwmarkService]]:
        """What a running keepalived holds in IPVS (best effort: None when unknown)."""
        if self.running() is None:
            return None
        try:
            return self.ipvs_reader.read_dump().services
        except LvsfwError:
            return None

    def _lost(self, found: ConfigFile) -> None:
        """Say when keepalived lost a service its unchanged file configures: a reload does
        not bring it back (keepalived thinks it still holds it), a restart does."""
        if found.table is None:
            return
        held = {(s.family, s.mark) for s in found.table}
        lost = sorted((s.mark, s.family) for s in found.services
                      if builds(s) and (s.family, s.mark) not in held)  # fmt: skip
        if lost:
            which = ", ".join(f"fwmark {mark} ({family})" for mark, family in lost)
            self.notes.append(
                f"keepalived does not hold {which} that {self.conf} configures (removed by"
                " hand?); a reload does not re-add it: restart keepalived"
            )

    def _foreign(self) -> ConflictError:
        return ConflictError(
            f"{self.conf} was not written by lvsfw (its first line is not {kaconf.HEADER!r});"
            f" lvsfw never overwrites it: move it away, or set keepalived_conf to another"
            f" file (e.g. /etc/keepalived/lvsfw.conf) and 'include' that from {self.conf}",
            self.conf,
        )

    def diff(
        self, spec: Specification, live: ServiceLive, owned: frozenset[ServiceKey]
    ) -> tuple[Optional[ConfigWrite], Optional[ConfigWrite]]:
        """The file's new text, written before the marks when it adds or changes a service
        (keepalived builds it first), after them when it only takes services away."""
        found = self.own(live, ConfigFile)
        if found.text is not None and not lvsfws(found.text):
            raise self._foreign()
        new = self.render_file(spec)
        if found.text == new or (found.text is None and not spec.services and not owned):
            self._lost(found)
            return None, None
        change = ConfigWrite(self.conf, found.text, new)
        if spec.services - found.services or found.text is None:
            return change, None
        return None, change

    def findings(self, spec: Specification, live: ServiceLive) -> list[str]:
        """How the file departs from the bundles' render (verify's drift)."""
        live = self.own(live, ConfigFile)
        if live.text is None:
            return [f"{self.conf} is missing; apply writes it"]
        if not lvsfws(live.text):
            return [f"{self.conf} is not lvsfw's (no {kaconf.HEADER!r} line)"]
        if live.text != self.render_file(spec):
            return [f"{self.conf} differs from the bundles' render; apply rewrites it"]
        return []

    def boot_files(self, spec: Specification) -> dict[str, str]:
        """None: keepalived builds IPVS from its own file when it starts at boot."""
        return {}

    def table(self, live: ServiceLive) -> frozenset[FwmarkService]:
        """The fwmark services live in IPVS, as keepalived built them (read only; the read
        :meth:`observe` made when keepalived runs, else one now)."""
        found = self.own(live, ConfigFile).table
        return found if found is not None else self.ipvs_reader.read_dump().services

    def check(self, change: Change) -> None:
        """``keepalived --config-test`` of the new text, in the Director's namespace; a
        :class:`CommandFailed` naming keepalived's complaint when it refuses."""
        new = self.own(change, ConfigWrite).new
        if new is None or new == self._tested:
            return
        folder = tempfile.mkdtemp(prefix="lvsfw-keepalived-")
        path = os.path.join(folder, "keepalived.conf")
        try:
            write_atomic(path, new)
            run([self.keepalived, "--config-test", "-f", path], netns=self.netns,
                install_hint=INSTALL_HINT)  # fmt: skip
        except CommandFailed as exc:
            lines = [line for line in exc.stderr.splitlines() if line.strip()]
            raise CommandFailed(exc.argv, exc.rc, "\n".join(lines[-5:]) or "no output") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._tested = new

    def commit(self, change: Change) -> None:
        """Test the new text, write it atomically, reload keepalived; a failed reload puts
        the old file back before raising."""
        write = self.own(change, ConfigWrite)
        self.check(write)
        self._write(write.new)
        try:
            self.reload()
        except BaseException:
            self._write(write.old)
            raise

    def _write(self, text: Optional[str]) -> None:
        if text is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.conf)
            return
        os.makedirs(os.path.dirname(self.conf) or ".", mode=0o755, exist_ok=True)
        write_atomic(self.conf, text)

    # -- keepalived itself -----------------------------------------------------------------

    def running(self) -> Optional[int]:
        """The pid of the keepalived reading this namespace's pid file, if it runs."""
        try:
            with open(self.pid_file, encoding="ascii") as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/comm", encoding="ascii") as f:
                comm = f.read().strip()
        except (OSError, ValueError):
            return None
        return pid if comm.startswith("keepalived") else None

    def _systemd(self) -> bool:
        if self.netns is not None or shutil.which("systemctl", path=TOOL_PATH) is None:
            return False
        try:
            run(["systemctl", "is-active", "--quiet", "keepalived"])
        except LvsfwError:
            return False
        return True

    def reload(self) -> None:
        """Have keepalived re-read its configuration (see the module's docstring)."""
        if self._systemd():
            run(["systemctl", "reload", "keepalived"])
            return
        pid = self.running()
        if pid is None:
            where = f" --namespace {self.netns}" if self.netns else ""
            self.notes.append(
                f"keepalived is not running (no live pid in {self.pid_file}): {self.conf} waits"
                f" for it (start it with: keepalived{where} -f {self.conf})"
            )
            return
        os.kill(pid, signal.SIGHUP)
