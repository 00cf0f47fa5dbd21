"""Build the VM's initramfs: static busybox, the 9p/overlay modules and a small init.

The init mounts the host's ``/`` (9p share ``hostroot``, read-only) under a tmpfs overlay,
copies busybox and the stage-2 script into the new root and ``switch_root``s into it. Stage 2
mounts ``/run``, ``/dev/pts``, ``/dev/shm`` and the read-write ``results`` share, runs the
per-run ``guest.sh`` the host wrote into that share, then powers the VM off.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from .kernel import Kernel, Log, VmSetupError, tool

# Modules the initramfs itself must load (dependencies are resolved with modprobe).
INITRAMFS_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]
NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=262144"
GUEST_TOOLS = "/.lvsfw-vm"
GUEST_RESULTS = "/run/lvsfw-results"
GUEST_SCRIPT = "guest.sh"

INIT = f"""#!/bin/busybox sh
# lvsfw test VM, stage 1 (initramfs)
/bin/busybox mkdir -p /proc /sys /dev /ro /rw /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {{ echo "lvsfw-vm: init failed: $*"; echo "LVSFW-VM-EXIT-STATUS: 125"; poweroff -f; }}
for m in $(cat /modules.order); do insmod "/modules/$m" || fail "insmod $m"; done
mount -t 9p -o {NINEP_OPTS},ro,cache=loose hostroot /ro || fail "mount hostroot"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "mount tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \\
    || fail "mount overlay"
mkdir -p /newroot{GUEST_TOOLS}
cp /bin/busybox /stage2 /newroot{GUEST_TOOLS}/ || fail "copy stage2"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot {GUEST_TOOLS}/busybox sh {GUEST_TOOLS}/stage2
"""

STAGE2 = f"""# lvsfw test VM, stage 2 (in the overlay root; busybox is {GUEST_TOOLS}/busybox)
bb={GUEST_TOOLS}/busybox
$bb mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
$bb mkdir -p /dev/pts /dev/shm {GUEST_RESULTS}
$bb mount -t devpts -o gid=5,mode=620 devpts /dev/pts
$bb mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
if $bb mount -t 9p -o {NINEP_OPTS} results {GUEST_RESULTS}; then
    $bb sh {GUEST_RESULTS}/{GUEST_SCRIPT} </dev/null
else
    echo "lvsfw-vm: cannot mount the results share"
    echo "LVSFW-VM-EXIT-STATUS: 125"
fi
$bb sync
$bb umount {GUEST_RESULTS} 2>/dev/null
$bb poweroff -f
"""


def find_busybox() -> Path:
    """The static busybox (package busybox-static) to put into the initramfs."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            return path
    raise VmSetupError("busybox not found: install busybox-static")


def module_files(kernel: Kernel, names: list[str]) -> list[Path]:
    """The .ko files needed to load ``names`` (dependencies first), from ``modules.dep``."""
    files: list[Path] = []
    for name in names:
        proc = subprocess.run(
            [tool("modprobe"), "-d", str(kernel.root), "-S", kernel.version, "--show-depends",
             name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise VmSetupError(f"modprobe --show-depends {name}: {proc.stderr.strip()}")
        for line in proc.stdout.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "insmod":
                path = Path(words[1])
                if path not in files:
                    files.append(path)
    return files


def initramfs_path(kernel: Kernel, busybox: Path, modules: list[Path]) -> Path:
    """Where the initramfs for this kernel, busybox and init script is cached."""
    digest = hashlib.sha256()
    for part in (INIT, STAGE2, str(busybox), str(busybox.stat().st_size)):
        digest.update(part.encode())
    for module in modules:
        digest.update(module.name.encode())
    return kernel.root / f"initramfs-{digest.hexdigest()[:16]}.cpio"


def ensure_initramfs(kernel: Kernel, log: Log) -> Path:
    """Return the cached initramfs for ``kernel``, building it if needed (cache lock held)."""
    busybox = find_busybox()
    modules = module_files(kernel, INITRAMFS_MODULES)
    target = initramfs_path(kernel, busybox, modules)
    if target.is_file():
        return target
    log(f"lvsfw-vm: building {target.name}")
    with tempfile.TemporaryDirectory(prefix=".initramfs-", dir=kernel.root) as tmp:
        stage = Path(tmp) / "root"
        for sub in ("bin", "modules", "proc", "sys", "dev", "ro", "rw", "newroot"):
            (stage / sub).mkdir(parents=True)
        shutil.copy2(busybox, stage / "bin" / "busybox")
        for module in modules:
            shutil.copy2(module, stage / "modules" / module.name)
        (stage / "modules.order").write_text("".join(m.name + "\n" for m in modules))
        (stage / "init").write_text(INIT)
        (stage / "init").chmod(0o755)
        (stage / "stage2").write_text(STAGE2)
        entries = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
        partial = Path(tmp) / "initramfs.cpio"
        with open(partial, "wb") as out:
            proc = subprocess.run(
                [tool("cpio"), "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                cwd=stage,
                input="".join(e + "\n" for e in entries).encode(),
                stdout=out,
                stderr=subprocess.PIPE,
                check=False,
            )
        if proc.returncode != 0:
            raise VmSetupError(f"cpio failed: {proc.stderr.decode(errors='replace').strip()}")
        for old in kernel.root.glob("initramfs-*.cpio"):
            old.unlink()
        partial.rename(target)
    return target
