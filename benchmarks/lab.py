"""Throwaway network namespaces and the commands run in them; never the root namespace's rules.

Every namespace is named ``lvsfwbench-<random>-<role>`` and deleted when its :class:`Lab`
closes (also on error and on SIGTERM through the caller's ``finally``).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Optional

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV = {"PATH": PATH, "LC_ALL": "C"}
CLIENT_MAC, DIRECTOR_MAC = "02:6c:76:be:00:01", "02:6c:76:be:00:02"
CLIENT_IP, DIRECTOR_IP = "198.18.0.1", "198.18.0.2"
CLIENT_IF, DIRECTOR_IF = "veth-cli", "veth-dir"


class LabError(RuntimeError):
    """A command failed; the message carries argv and stderr."""


def run(argv: Sequence[str], stdin: Optional[str] = None, timeout: float = 300) -> str:
    """Run ``argv`` (no shell); stdout, or LabError with stderr."""
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, env=ENV, timeout=timeout,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv[:6])} exited {done.returncode}: {done.stderr[-400:]}")
    return done.stdout


def timed(argv: Sequence[str], stdin: Optional[str] = None) -> float:
    """Seconds ``argv`` takes, wall clock (LabError when it fails)."""
    start = time.perf_counter()
    run(argv, stdin)
    return time.perf_counter() - start


def in_ns(ns: str, *argv: str) -> list[str]:
    """``argv`` run inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


class Lab:
    """Namespaces created on demand and all deleted by :meth:`close` (a context manager)."""

    def __init__(self, prefix: str = "lvsfwbench") -> None:
        self.tag = f"{prefix}-{secrets.token_hex(3)}"
        self.created: list[str] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete every namespace this lab created."""
        while self.created:
            try:
                run(["ip", "netns", "delete", self.created.pop()])
            except LabError as exc:
                print(f"benchmarks: {exc}", file=sys.stderr)

    def namespace(self, role: str) -> str:
        """A new empty namespace (lo up) named after ``role``."""
        name = f"{self.tag}-{role}"
        run(["ip", "netns", "add", name])
        self.created.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def delete(self, name: str) -> None:
        """Delete one namespace now."""
        if name in self.created:
            self.created.remove(name)
            run(["ip", "netns", "delete", name])

    def pair(self, role: str) -> tuple[str, str]:
        """A client and a director namespace joined by a veth pair (IPv4, static neighbours)."""
        client, director = self.namespace(f"{role}-c"), self.namespace(f"{role}-d")
        run(["ip", "-n", client, "link", "add", CLIENT_IF, "address", CLIENT_MAC, "type", "veth",
             "peer", "name", DIRECTOR_IF, "address", DIRECTOR_MAC, "netns", director])  # fmt: skip
        for ns, dev, addr, peer, mac in (
            (client, CLIENT_IF, CLIENT_IP, DIRECTOR_IP, DIRECTOR_MAC),
            (director, DIRECTOR_IF, DIRECTOR_IP, CLIENT_IP, CLIENT_MAC),
        ):
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            run(["ip", "-n", ns, "neigh", "replace", peer, "lladdr", mac, "dev", dev,
                 "nud", "permanent"])  # fmt: skip
        return client, director


def exec_overhead(lab: Lab, repeat: int = 5) -> float:
    """The best time of ``ip netns exec NS true``: the fixed cost in every tool floor."""
    ns = lab.namespace("probe")
    try:
        return min(timed(in_ns(ns, "true")) for _ in range(repeat))
    finally:
        lab.delete(ns)


def require_root() -> Optional[str]:
    """Why the kernel parts cannot run here, or None."""
    if os.geteuid() != 0:
        return "the kernel measurements need root (network namespaces)"
    return None
