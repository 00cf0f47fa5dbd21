"""The command line as admins, systemd units and Ansible run it (issue 13): fresh ``lvsfw``
processes on a freshly written TOML file, next to the kernel tools loading the same ruleset.

Per N and packet filter: the workload written as one config file (``[director]`` names the
firewall, ``ipvs = false``, the throwaway namespace and a state file), then, each a new process
of the console script (``Path(sys.executable).parent / "lvsfw"``)::

    lvsfw check FILE                     (once per N: no kernel access)
    lvsfw plan FILE                      cold: the namespace is empty
    lvsfw apply --yes FILE               cold
    lvsfw apply --yes FILE               no-op
    (edit FILE: bundle N/2 gains tcp:8443, or loses it again)
    lvsfw plan FILE                      one change
    lvsfw apply --yes FILE               one change
    lvsfw verify FILE                    (exit 0: no drift)

Python start-up is ``python -c "import lvsfw.cli"`` (interpreter, click, lvsfw's imports).
Each process's peak resident size comes from GNU ``time`` (a small process forking it, so the
benchmark's own size is not carried into the child's). The floor is
:func:`benchmarks.apply.floor`: the same ruleset loaded by ``nft -f``, or ``ipset restore`` +
``iptables-restore --noflush``.
``python -m benchmarks.cli [N ...]`` runs this section alone (root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.apply import PACKET_FILTERS, floor
from benchmarks.lab import ENV, PATH, Lab, require_root
from benchmarks.report import cli_table
from benchmarks.workload import make_bundles
from lvsfw import config
from lvsfw.rules import specify

Result = dict[str, Any]
LVSFW = str(Path(sys.executable).parent / "lvsfw")
EXTRA = " tcp:8443"
#: GNU time (``apt-get install time``), which reports a process's peak RSS; None if absent.
TIME = shutil.which("time", path=PATH)
#: The tools' environment, and PYTHONPATH passed on: the children run the benchmark's lvsfw.
CHILD_ENV = {**ENV, **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
#: The commands timed per backend, in the order they run (check runs once per N).
STEPS = ("plan_cold", "apply_cold", "apply_noop", "plan_change", "apply_change", "verify")
#: Exit statuses of ``lvsfw plan`` that are success (2: something would change).
PLAN_OK = frozenset({0, 2})


class CommandError(RuntimeError):
    """An lvsfw process failed; the message carries argv, status and stderr."""


def run_timed(argv: list[str], ok: frozenset[int] = frozenset({0})) -> Result:
    """Run ``argv`` once: wall seconds, exit status, output bytes and the process's peak RSS
    in MiB (through GNU ``time``, a small process forking it: a child forked straight from
    this big benchmark process would report this process's size; None without ``time``)."""
    with tempfile.TemporaryDirectory(prefix="lvsfwbench-run-") as scratch:
        rss_file = os.path.join(scratch, "rss")
        wrapped = [TIME, "-f", "%M", "-o", rss_file, *argv] if TIME else argv
        with open(os.path.join(scratch, "out"), "wb") as out:
            start = time.perf_counter()
            done = subprocess.run(wrapped, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.PIPE, env=CHILD_ENV, check=False)  # fmt: skip
            seconds = time.perf_counter() - start
            size = out.tell()
        if done.returncode not in ok:
            message = done.stderr.decode(errors="replace")[-600:]
            raise CommandError(f"{' '.join(argv[:4])} exited {done.returncode}: {message}")
        rss = None
        if TIME:
            with open(rss_file, encoding="ascii") as f:
                rss = int(f.read().split()[-1]) / 1024
    return {"s": seconds, "rc": done.returncode, "out_bytes": size, "maxrss_mib": rss}


def best(argv: list[str], repeat: int, ok: frozenset[int] = frozenset({0})) -> Result:
    """The fastest of ``repeat`` runs of ``argv`` (all runs' seconds under ``runs_s``)."""
    runs = [run_timed(argv, ok) for _ in range(max(repeat, 1))]
    fastest = dict(min(runs, key=lambda r: float(r["s"])))
    fastest["runs_s"] = [r["s"] for r in runs]
    return fastest


def write_config(path: Path, count: int, firewall: str, netns: str, state_file: str) -> int:
    """The workload as the config file an admin keeps; its size in bytes."""
    settings = config.DirectorSettings(
        firewall=firewall, ipvs=False, netns=netns, state_file=state_file
    )
    text = config.dumps(make_bundles(count), settings)
    path.write_text(text, encoding="utf-8")
    return len(text.encode())


def edit_ports(path: Path, name: str, add: bool) -> None:
    """Edit the file in place as an admin would: bundle ``name`` gains (or loses) tcp:8443."""
    text = path.read_text(encoding="utf-8")
    start = text.index(f'name = "{name}"\n')
    line = text.index("ports = ", start)
    end = text.index("\n", line)
    value = text[line:end]
    value = value[:-1] + EXTRA + '"' if add else value.replace(EXTRA, "")
    path.write_text(text[:line] + value + text[end:], encoding="utf-8")


def _argv(command: str, path: Path, workdir: str) -> list[str]:
    yes = ["--yes"] if command == "apply" else []
    return [LVSFW, command, *yes, "--lock-dir", workdir, str(path)]


def measure(lab: Lab, name: str, count: int, workdir: str, repeat: int) -> Result:
    """Every command of the module docstring for backend ``name`` at ``count`` bundles."""
    ns = lab.namespace(f"cli{name.rsplit('-', maxsplit=1)[-1]}{count}")
    path = Path(workdir) / f"lvsfw-{name}-{count}.toml"
    state_file = os.path.join(workdir, f"state-{ns}.json")
    out: Result = {"config_bytes": write_config(path, count, name, ns, state_file)}
    try:
        plan, apply, verify = (_argv(c, path, workdir) for c in ("plan", "apply", "verify"))
        out["plan_cold"] = best(plan, repeat, PLAN_OK)
        out["apply_cold"] = run_timed(apply)
        out["apply_noop"] = best(apply, repeat)
        changes, plans = [], []
        for attempt in range(max(repeat, 1)):
            edit_ports(path, f"svc{count // 2}", add=attempt % 2 == 0)
            plans.append(run_timed(plan, PLAN_OK))
            changes.append(run_timed(apply))
        out["plan_change"] = min(plans, key=lambda r: float(r["s"]))
        out["apply_change"] = min(changes, key=lambda r: float(r["s"]))
        out["apply_change"]["runs_s"] = [r["s"] for r in changes]
        out["verify"] = best(verify, repeat)
        run_timed([LVSFW, "destroy", "--yes", "--lock-dir", workdir, "--config", str(path)])
    finally:
        lab.delete(ns)
    return out


def run_cli(lab: Lab, sizes: list[int], backends: tuple[str, ...], repeat: int = 1) -> Result:
    """The command-line section: per N, ``check`` and every backend's commands and floor."""
    startup = best([sys.executable, "-c", "import lvsfw.cli"], 3)
    results: Result = {"startup": startup, "lvsfw": LVSFW, "sizes": {}}
    for count in sizes:
        print(f"command line N={count} ...", file=sys.stderr, flush=True)
        reps = repeat if count <= 1000 else 1
        section: Result = {}
        with tempfile.TemporaryDirectory(prefix="lvsfwbench-cli-") as workdir:
            path = Path(workdir) / "check.toml"
            section["config_bytes"] = write_config(path, count, "nftables", "unused", "unused")
            section["check"] = best([LVSFW, "check", str(path)], reps)
            spec = specify(make_bundles(count))
            for name in backends:
                result = measure(lab, name, count, workdir, reps)
                floors = [floor(lab, name, spec, workdir) for _ in range(max(reps, 1))]
                result["floor"] = min(floors, key=lambda f: float(f["load_s"]))
                section[name] = result
        results["sizes"][str(count)] = section
    return results


def main(argv: list[str]) -> int:
    """``python -m benchmarks.cli [N ...]`` (default 1,000 and 10,000): this section alone."""
    problem = require_root()
    if problem:
        print(f"benchmarks.cli: {problem}", file=sys.stderr)
        return 2
    sizes = [int(a) for a in argv] or [1000, 10000]
    with Lab() as lab:
        print(cli_table(run_cli(lab, sizes, PACKET_FILTERS)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
