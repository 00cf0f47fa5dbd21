"""keepalived reloaded through systemd: ``systemctl reload keepalived`` when the unit is
active (in the current namespace only: a unit's keepalived is the root namespace's).

Neither this machine nor the IPVS VM runs systemd as PID 1, so ``systemctl`` is played by a
recorder of the argv lvsfw runs (nothing is executed, no namespace is touched); what is
proven is lvsfw's side: which command, in which order, and the old file put back when the
reload fails. The SIGHUP path and a real keepalived reloading are proven in
tests/test_karun.py and the VM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lvsfw import Bundle
from lvsfw.backends import karun
from lvsfw.backends.kaconf import HEADER
from lvsfw.backends.karun import ConfigWrite, KeepalivedRuntime
from lvsfw.errors import CommandFailed
from lvsfw.rules import specify

WEB = Bundle("web", ["192.0.2.10"], "tcp:80,443", 80, real_servers=["10.0.0.11"],
             health={"check": "tcp", "port": 80})  # fmt: skip


class Systemctl:
    """Records every command lvsfw runs; ``systemctl is-active`` succeeds when ``active``,
    ``systemctl reload`` fails when ``broken``; keepalived's config test passes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, active: bool, broken: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.active, self.broken = active, broken
        monkeypatch.setattr(karun, "run", self.run)

    def run(self, argv: Sequence[str], **kwargs: Any) -> str:
        self.calls.append(list(argv))
        if argv[:2] == ["systemctl", "is-active"] and not self.active:
            raise CommandFailed(argv, 3, "")
        if argv[:2] == ["systemctl", "reload"] and self.broken:
            raise CommandFailed(argv, 1, "Job for keepalived.service failed")
        return ""

    def systemctl(self) -> list[list[str]]:
        return [c for c in self.calls if c[0] == "systemctl"]


def first_write(tmp: Path) -> tuple[KeepalivedRuntime, ConfigWrite]:
    half = KeepalivedRuntime(None, conf=str(tmp / "keepalived.conf"), pid_file=str(tmp / "pid"))
    change, _ = half.diff(specify([WEB]), half.observe(frozenset()), frozenset())
    assert isinstance(change, ConfigWrite)
    return half, change


def test_an_active_unit_is_reloaded_by_systemctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Config test, write, then ``systemctl is-active --quiet keepalived`` and ``systemctl
    reload keepalived``; no pid file is needed and nothing says keepalived is not running."""
    systemctl = Systemctl(monkeypatch, active=True)
    half, change = first_write(tmp_path)
    half.commit(change)
    assert systemctl.calls[0][:2] == ["keepalived", "--config-test"]
    assert systemctl.systemctl() == [["systemctl", "is-active", "--quiet", "keepalived"],
                                     ["systemctl", "reload", "keepalived"]]  # fmt: skip
    assert (tmp_path / "keepalived.conf").read_text() == change.new
    assert half.notes == []


def test_a_failed_systemctl_reload_puts_the_old_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit refuses the reload: the error is raised and lvsfw's previous file is back."""
    old = f"{HEADER}; lvsfw rewrites it\n"
    (tmp_path / "keepalived.conf").write_text(old)
    Systemctl(monkeypatch, active=True, broken=True)
    half, change = first_write(tmp_path)
    assert change.old == old
    with pytest.raises(CommandFailed, match=r"keepalived\.service failed"):
        half.commit(change)
    assert (tmp_path / "keepalived.conf").read_text() == old


def test_an_inactive_unit_falls_back_to_the_pid_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemctl exists but the unit is not active: no reload through it; with no live pid
    in the pid file, the note says keepalived is not running and the file waits."""
    systemctl = Systemctl(monkeypatch, active=False)
    half, change = first_write(tmp_path)
    half.commit(change)
    assert systemctl.systemctl() == [["systemctl", "is-active", "--quiet", "keepalived"]]
    assert len(half.notes) == 1 and "keepalived is not running" in half.notes[0], half.notes
    assert (tmp_path / "keepalived.conf").read_text() == change.new


def test_a_namespace_never_asks_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``netns``, keepalived is the one started with ``--namespace``: its pid file, not
    the unit (which runs in the root namespace), is what is reloaded."""
    systemctl = Systemctl(monkeypatch, active=True)
    half = KeepalivedRuntime("lvsfw-nowhere", conf=str(tmp_path / "k.conf"),
                             pid_file=str(tmp_path / "pid"))  # fmt: skip
    half.reload()
    assert systemctl.systemctl() == []
    assert "keepalived is not running" in half.notes[0]
