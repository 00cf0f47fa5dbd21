"""Command line of the test VM harness.

``python -m tests.vm prepare`` fetches the kernel and builds the initramfs into the cache;
``python -m tests.vm run [--timeout S] [--results DIR] -- CMD ARGS...`` runs CMD in the VM and
exits with CMD's exit status (124 if the VM timed out, 125 if it reported no status).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .kernel import VmSetupError, cache_dir, directory_size
from .runner import DEFAULT_TIMEOUT, prepare, run_in_vm, unavailable_reason


def _parser() -> argparse.ArgumentParser:
    """The argument parser with the ``prepare`` and ``run`` subcommands."""
    parser = argparse.ArgumentParser(prog="python -m tests.vm", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="fetch the kernel and build the initramfs (cached)")
    run = sub.add_parser("run", help="run a command in the VM and exit with its status")
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                     help=f"seconds before the VM is killed (default {DEFAULT_TIMEOUT:g})")
    run.add_argument("--results", type=Path, default=None,
                     help="host directory shared read-write (default: a temporary one, removed)")
    run.add_argument("--cwd", type=Path, default=None, help="guest working directory")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"lvsfw-vm: cannot run the VM here: {reason}", file=sys.stderr)
        return 2
    try:
        if args.action == "prepare":
            begin = time.monotonic()
            kernel, initrd = prepare()
            size = directory_size(cache_dir()) / 1e6
            print(f"lvsfw-vm: kernel {kernel.version}: {kernel.vmlinuz}")
            print(f"lvsfw-vm: initramfs {initrd} ({initrd.stat().st_size / 1e6:.1f} MB)")
            print(f"lvsfw-vm: cache {cache_dir()} is {size:.0f} MB; "
                  f"prepared in {time.monotonic() - begin:.1f}s")
            return 0
        command = list(args.command)
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            print("lvsfw-vm: run needs a command after --", file=sys.stderr)
            return 2
        keep = args.results is not None
        results = args.results or Path(tempfile.mkdtemp(prefix="lvsfw-vm-"))
        try:
            result = run_in_vm(command, timeout=args.timeout, cwd=args.cwd, results_dir=results)
        finally:
            if not keep:
                shutil.rmtree(results, ignore_errors=True)
        return result.returncode
    except VmSetupError as exc:
        print(f"lvsfw-vm: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
