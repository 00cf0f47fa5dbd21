"""Boot the test VM, run one command inside it and bring back its exit status and output."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

from .initramfs import GUEST_RESULTS, GUEST_SCRIPT, ensure_initramfs
from .kernel import Kernel, Log, VmSetupError, cache_dir, cache_lock, ensure_kernel, tool

DEFAULT_TIMEOUT = 1200.0
TIMEOUT_STATUS = 124
NO_STATUS = 125
STATUS_FILE = "exit-status"
EXIT_MARKER = "LVSFW-VM-EXIT-STATUS:"
START_MARKER = "lvsfw-vm: guest command starting"
# Modules loaded explicitly in the guest; the rest (ip_vs_rr, nft_*, xt_*) autoload.
GUEST_MODULES = [
    "veth", "dummy", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_wlc", "ip_vs_lc", "ip_vs_sh",
    "nf_conntrack", "nf_tables", "nft_ct", "iptable_mangle", "ip6table_mangle",
    "iptable_filter", "ip6table_filter", "xt_mark", "ip_set", "ip_set_hash_ipport", "xt_set",
]
# Host variables always passed to the guest command (if set), besides every LVSFW_* one.
PASSED_ENV = ["PATH", "HOME", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH", "PYENV_VERSION"]


@dataclass(frozen=True)
class VmResult:
    """Outcome of one command run in the VM."""

    returncode: int
    """The guest command's exit status; 124 on timeout, 125 if the VM reported none."""
    output: str
    """Everything the VM printed on its console, ``\\r`` stripped."""
    results_dir: Path
    """The host side of the read-write results share (``LVSFW_VM_RESULTS`` in the guest)."""
    boot_seconds: Optional[float] = None
    """Wall seconds from starting QEMU until the guest command started."""
    wall_seconds: float = 0.0
    """Wall seconds from starting QEMU until it exited or was killed."""
    timed_out: bool = False
    """Whether the VM was killed for exceeding the timeout."""
    qemu_argv: list[str] = field(default_factory=list)
    """The QEMU command line used."""


def _log(message: str) -> None:
    """Progress messages of the harness go to stderr."""
    print(message, file=sys.stderr, flush=True)


def prepare(log: Optional[Log] = None) -> tuple[Kernel, Path]:
    """Fetch and unpack the kernel and build the initramfs, reusing the cache when possible."""
    report = log or _log
    cache = cache_dir()
    with cache_lock(cache):
        kernel = ensure_kernel(cache, report)
        initrd = ensure_initramfs(kernel, report)
    return kernel, initrd


def unavailable_reason() -> Optional[str]:
    """Why this machine cannot run the VM, or None if it can."""
    if os.geteuid() != 0:
        return "the VM harness needs root (9p passthrough of / and the kernel cache)"
    for name in ("qemu-system-x86_64", "cpio", "depmod", "modprobe", "apt-get", "dpkg"):
        try:
            tool(name)
        except VmSetupError as exc:
            return str(exc)
    if not (Path("/bin/busybox").exists() or Path("/usr/bin/busybox").exists()):
        return "busybox is not installed (busybox-static)"
    return None


def pick_accel() -> str:
    """``kvm`` where a real KVM (kvm_intel/kvm_amd, not kvm_pvm) is usable, else ``tcg``.

    ``LVSFW_VM_ACCEL`` overrides the choice.
    """
    forced = os.environ.get("LVSFW_VM_ACCEL")
    if forced:
        return forced
    modules = Path("/sys/module")
    real_kvm = (modules / "kvm_intel").exists() or (modules / "kvm_amd").exists()
    if real_kvm and not (modules / "kvm_pvm").exists() and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "kvm"
    return "tcg"


def qemu_argv(kernel: Kernel, initrd: Path, results: Path) -> list[str]:
    """The QEMU command line: no network, host / read-only over 9p, a read-write results share."""
    accel = pick_accel()
    cpu = "host" if accel == "kvm" else "max"
    smp = os.environ.get("LVSFW_VM_SMP") or str(min(2, os.cpu_count() or 1))
    append = "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init"
    return [
        tool("qemu-system-x86_64"),
        "-nodefaults", "-no-user-config", "-no-reboot",
        "-machine", f"q35,accel={accel}", "-cpu", cpu,
        "-smp", smp, "-m", os.environ.get("LVSFW_VM_MEM", "1024"),
        "-display", "none", "-serial", "stdio", "-nic", "none",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", append,
        "-fsdev", "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=results,path={results},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=results,mount_tag=results",
    ]


def guest_env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Environment of the guest command: host essentials, every LVSFW_*, and LVSFW_IN_VM=1."""
    env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith("LVSFW_")}
    env.pop("LVSFW_VM_CACHE", None)
    venv = os.environ.get("VIRTUAL_ENV")
    bindir = str(Path(venv) / "bin") if venv else str(Path(sys.executable).parent)
    path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    parts = path.split(os.pathsep)
    if bindir not in parts:
        parts.insert(0, bindir)
    for sbin in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if sbin not in parts:
            parts.append(sbin)
    env["PATH"] = os.pathsep.join(parts)
    env.setdefault("HOME", "/root")
    env.update({"LVSFW_IN_VM": "1", "LVSFW_VM_RESULTS": GUEST_RESULTS, "TERM": "dumb"})
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def guest_script(kernel: Kernel, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> str:
    """The per-run script the guest's stage 2 executes (busybox sh, arguments shell-quoted)."""
    q = shlex.quote
    mods = " ".join(GUEST_MODULES)
    assignments = " ".join(q(f"{k}={v}") for k, v in sorted(env.items()))
    status = f"{GUEST_RESULTS}/{STATUS_FILE}"
    return f"""# lvsfw test VM: one guest command (generated by tests/vm/runner.py)
bb=/.lvsfw-vm/busybox
$bb mkdir -p /lib/modules
$bb ln -sfn {q(str(kernel.modules_dir))} /lib/modules/{q(kernel.version)}
for m in {mods}; do
    /sbin/modprobe "$m" || echo "lvsfw-vm: modprobe $m failed"
done
$bb ip link set lo up
cd {q(str(cwd))} || {{ echo "{EXIT_MARKER} {NO_STATUS}"; exit; }}
echo "{START_MARKER} (guest uptime $($bb cut -d' ' -f1 /proc/uptime)s, kernel $($bb uname -r))"
$bb env -i {assignments} {" ".join(q(a) for a in argv)} </dev/null
rc=$?
echo "$rc" > {status}
[ "$rc" = 0 ] || $bb dmesg > {GUEST_RESULTS}/dmesg.txt
$bb sync
echo "{EXIT_MARKER} $rc"
"""


def _pump(stream: subprocess.Popen[bytes], sink: Optional[TextIO], lines: list[str],
          started: list[float]) -> None:
    """Copy the console to ``sink`` line by line (``\\r`` stripped), noting the start marker."""
    assert stream.stdout is not None
    for raw in iter(stream.stdout.readline, b""):
        line = raw.decode("utf-8", errors="replace").replace("\r", "")
        if START_MARKER in line and not started:
            started.append(time.monotonic())
        lines.append(line)
        if sink is not None:
            sink.write(line)
            sink.flush()


def _status(results: Path, output: str) -> Optional[int]:
    """The guest command's status: the results file, else the last marker on the console."""
    with_file = results / STATUS_FILE
    if with_file.is_file():
        text = with_file.read_text().strip()
        if text.isdigit():
            return int(text)
    found = re.findall(rf"^{re.escape(EXIT_MARKER)} (\d+)\s*$", output, flags=re.M)
    return int(found[-1]) if found else None


def run_in_vm(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: Optional[os.PathLike] = None,
    results_dir: Optional[os.PathLike] = None,
    env: Optional[Mapping[str, str]] = None,
    stream: Optional[TextIO] = sys.stdout,
) -> VmResult:
    """Run ``argv`` in a fresh VM and return its exit status and console output.

    ``cwd`` (default: the caller's) must be on the host's root filesystem; the guest sees it at
    the same path. ``results_dir`` (default: a new temporary directory, left for the caller)
    is shared read-write and appears in the guest as ``$LVSFW_VM_RESULTS``. ``env`` adds
    variables for the guest command. The console is copied to ``stream`` as it arrives.
    """
    if not argv:
        raise ValueError("run_in_vm needs a command")
    kernel, initrd = prepare()
    workdir = Path(cwd or os.getcwd()).resolve()
    results = Path(results_dir) if results_dir else Path(tempfile.mkdtemp(prefix="lvsfw-vm-"))
    results = results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    for stale in (STATUS_FILE, GUEST_SCRIPT):
        (results / stale).unlink(missing_ok=True)
    (results / GUEST_SCRIPT).write_text(guest_script(kernel, argv, workdir, guest_env(env)))
    cmd = qemu_argv(kernel, initrd, results)
    lines: list[str] = []
    started: list[float] = []
    begin = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    pump = threading.Thread(target=_pump, args=(proc, stream, lines, started), daemon=True)
    pump.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pump.join(timeout=10)
    wall = time.monotonic() - begin
    boot = started[0] - begin if started else None
    notes: list[str] = []
    if boot is not None:
        notes.append(f"lvsfw-vm: guest command started after {boot:.1f}s")
    output = "".join(lines)
    if timed_out:
        code = TIMEOUT_STATUS
        notes.append(f"lvsfw-vm: TIMEOUT: the VM did not finish within {timeout:g}s and was "
                     f"killed; reporting failure (exit {TIMEOUT_STATUS})")
    else:
        found = _status(results, output)
        if found is None:
            code = NO_STATUS
            notes.append(f"lvsfw-vm: the VM exited (qemu status {proc.returncode}) without "
                         f"reporting the guest command's status; reporting failure")
        else:
            code = found
    notes.append(f"lvsfw-vm: exit status {code} after {wall:.1f}s wall ({pick_accel()}, "
                 f"kernel {kernel.version})")
    for note in notes:
        output += note + "\n"
        if stream is not None:
            stream.write(note + "\n")
            stream.flush()
    return VmResult(code, output, results, boot, wall, timed_out, cmd)


__all__ = ["VmResult", "VmSetupError", "prepare", "run_in_vm", "unavailable_reason"]
