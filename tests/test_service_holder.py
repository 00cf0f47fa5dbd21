"""The service half that made lvsfw's IPVS services is recorded, and never silently swapped.

A switch from ``ipvs = true`` (ipvsadm) to ``"keepalived"``, back, or to another keepalived
file, used to leave what the first half made: ipvsadm's services under a keepalived that then
logs "already exists", or a keepalived.conf nobody rewrites. Now the state file names the
holder (``ipvs``, or ``keepalived:`` and its file); apply and plan refuse another one, naming
both and what to run, before anything is written; verify reports it; destroy removes the
services through the half that made them. The marks are real nft rules in a throwaway
namespace, ``keepalived --config-test`` is the real one, ipvsadm is the test double.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lvsfw.backends.ipvs import Ipvs
from lvsfw.backends.kaconf import HEADER
from lvsfw.backends.karun import KeepalivedRuntime
from lvsfw.errors import ConflictError
from tests import fake_ipvsadm
from tests.test_director import Netns
from tests.test_karun import (
    DNS,
    WEB,
    director,
    lvsfw,
    marks,
    runtime,
    vrrp_ns,
    write_config,
)

__all__ = ["vrrp_ns"]  # the fixture, used by name

FOREIGN = ["-A", "-t", "192.0.2.99:25", "-s", "rr"]  # an admin's own service


def ipvsadm_double(tmp: Path) -> str:
    """The ipvsadm double, holding one foreign service."""
    wrapper = fake_ipvsadm.install(tmp / "ipvs")
    subprocess.run([str(wrapper), *FOREIGN], check=True)
    return str(wrapper)


def recorded(tmp: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((tmp / "state.json").read_text())
    return data


def everything(ns: Netns, tmp: Path, ipvsadm: str) -> tuple[str, str, bytes, bool]:
    """Marks, IPVS, the state file, whether a keepalived.conf exists: what a refusal keeps."""
    table = subprocess.run([ipvsadm, "-S", "-n"], capture_output=True, text=True, check=True)
    conf = (tmp / "keepalived.conf").exists()
    return marks(ns), table.stdout, (tmp / "state.json").read_bytes(), conf


def test_apply_records_the_holder(vrrp_ns: Netns, tmp_path: Path) -> None:
    """ipvsadm's services are recorded as ``ipvs``'s, keepalived's with its file's path."""
    ipvsadm = ipvsadm_double(tmp_path)
    director(vrrp_ns, tmp_path, Ipvs(vrrp_ns.name, ipvsadm=ipvsadm), ipvsadm).apply([WEB])
    assert recorded(tmp_path)["ipvs"] == "ipvs"
    assert recorded(tmp_path)["version"] == 3
    director(vrrp_ns, tmp_path, Ipvs(vrrp_ns.name, ipvsadm=ipvsadm), ipvsadm).destroy()
    half = runtime(vrrp_ns, tmp_path, ipvsadm=ipvsadm)
    director(vrrp_ns, tmp_path, half, ipvsadm).apply([WEB])
    assert recorded(tmp_path)["ipvs"] == f"keepalived:{tmp_path / 'keepalived.conf'}"


def test_ipvsadm_to_keepalived_refused_then_destroy_then_apply(
    vrrp_ns: Netns, tmp_path: Path
) -> None:
    """Services made by ipvsadm, a keepalived Director: apply and plan refuse naming both
    and 'lvsfw destroy', with marks, IPVS and state byte for byte and no file written;
    verify says so (service-extra). destroy removes them through ipvsadm (the foreign
    service stays); then the keepalived apply goes through."""
    ipvsadm = ipvsadm_double(tmp_path)
    director(vrrp_ns, tmp_path, Ipvs(vrrp_ns.name, ipvsadm=ipvsadm), ipvsadm).apply([WEB, DNS])
    before = everything(vrrp_ns, tmp_path, ipvsadm)
    lb = director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path, ipvsadm=ipvsadm), ipvsadm)
    for attempt in (lb.apply, lb.plan):
        with pytest.raises(ConflictError) as refused:
            attempt([WEB, DNS])
        message = str(refused.value)
        assert "made by ipvsadm (fwmark 53 (ipv4), fwmark 80 (ipv4))" in message, message
        assert f"runs keepalived ({tmp_path / 'keepalived.conf'})" in message, message
        assert "run 'lvsfw destroy' first" in message, message
        assert everything(vrrp_ns, tmp_path, ipvsadm) == before
    report = lb.verify([WEB, DNS])
    assert [d.kind for d in report.drift] == ["service-extra"], report.drift
    assert "made by ipvsadm" in report.drift[0].detail

    lb.destroy()
    left = fake_ipvsadm.table(Path(ipvsadm))
    assert "FWM" not in left and "192.0.2.99:25" in left, left
    assert "192.0.2.10" not in marks(vrrp_ns)
    assert recorded(tmp_path)["services"] == [] and recorded(tmp_path)["ipvs"] is None
    assert not (tmp_path / "keepalived.conf").exists()  # keepalived's half was never used

    lb = director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path, ipvsadm=ipvsadm), ipvsadm)
    assert lb.apply([WEB, DNS])
    assert "virtual_server fwmark 80" in (tmp_path / "keepalived.conf").read_text()
    assert "FWM" not in fake_ipvsadm.table(Path(ipvsadm))  # keepalived's to build, not lvsfw's


def test_keepalived_to_ipvsadm_and_a_moved_file(vrrp_ns: Netns, tmp_path: Path) -> None:
    """Services in lvsfw's keepalived.conf: an ipvsadm Director, or a keepalived one with
    another file, is refused; destroy (through either) empties lvsfw's own file to its
    header, keepalived not running is said, and the other file is never created."""
    ipvsadm = ipvsadm_double(tmp_path)
    conf = tmp_path / "keepalived.conf"
    director(vrrp_ns, tmp_path, runtime(vrrp_ns, tmp_path, ipvsadm=ipvsadm), ipvsadm).apply([WEB])
    moved = KeepalivedRuntime(vrrp_ns.name, conf=str(tmp_path / "moved.conf"), ipvsadm=ipvsadm)
    for half in (Ipvs(vrrp_ns.name, ipvsadm=ipvsadm), moved):
        before = everything(vrrp_ns, tmp_path, ipvsadm)
        with pytest.raises(ConflictError, match=f"made by keepalived \\({conf}\\)"):
            director(vrrp_ns, tmp_path, half, ipvsadm).apply([WEB])
        assert everything(vrrp_ns, tmp_path, ipvsadm) == before
    lb = director(vrrp_ns, tmp_path, moved, ipvsadm)
    lb.destroy()
    assert conf.read_text() == f"{HEADER}; lvsfw rewrites it\n"
    assert any("not running" in note for note in moved.notes), moved.notes
    assert not (tmp_path / "moved.conf").exists()
    assert lb.apply([WEB])
    assert "virtual_server fwmark 80" in (tmp_path / "moved.conf").read_text()
    assert recorded(tmp_path)["ipvs"] == f"keepalived:{tmp_path / 'moved.conf'}"


def test_a_state_without_holder_is_taken_as_this_halfs(vrrp_ns: Netns, tmp_path: Path) -> None:
    """A version 2 state file (no ``ipvs``): the Director's own half is assumed, as before
    the holder was recorded, and the next apply records it."""
    ipvsadm = ipvsadm_double(tmp_path)
    lb = director(vrrp_ns, tmp_path, Ipvs(vrrp_ns.name, ipvsadm=ipvsadm), ipvsadm)
    lb.apply([WEB])
    old = recorded(tmp_path)
    del old["ipvs"]
    old["version"] = 2
    (tmp_path / "state.json").write_text(json.dumps(old))
    assert not lb.apply([WEB])
    assert recorded(tmp_path)["ipvs"] == "ipvs"


def test_the_command_says_it_in_one_line(vrrp_ns: Netns, tmp_path: Path) -> None:
    """``lvsfw apply`` of a file switched to keepalived after an ipvsadm apply: one
    ``lvsfw:`` line naming both halves and ``lvsfw destroy``, nothing written; the two
    commands it names then converge."""
    ipvsadm = ipvsadm_double(tmp_path)
    conf = tmp_path / "ka.conf"
    flags = ("--ipvsadm", ipvsadm, "--lock-dir", str(tmp_path))
    plain = write_config(tmp_path, vrrp_ns, "ipvs = true")
    assert lvsfw("apply", "--yes", str(plain), *flags).returncode == 0
    path = write_config(tmp_path, vrrp_ns, f'ipvs = "keepalived"\nnode = "lb1"\n'
                        f'keepalived_conf = "{conf}"')  # fmt: skip
    before = everything(vrrp_ns, tmp_path, ipvsadm)
    refused = lvsfw("apply", "--yes", str(path), *flags)
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("lvsfw: ") and "Traceback" not in refused.stderr
    assert "made by ipvsadm (fwmark 80 (ipv4))" in refused.stderr
    assert "run 'lvsfw destroy' first" in refused.stderr
    assert everything(vrrp_ns, tmp_path, ipvsadm) == before and not conf.exists()
    assert lvsfw("destroy", "-c", str(path), "--yes", *flags).returncode == 0
    assert "FWM" not in fake_ipvsadm.table(Path(ipvsadm))
    done = lvsfw("apply", "--yes", str(path), *flags)
    assert done.returncode == 0, done.stderr
    assert conf.read_text().startswith(HEADER)
