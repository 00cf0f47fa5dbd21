"""Running the kernel tools: argv lists through ``sh``, never a shell string."""

from __future__ import annotations

import shutil
from collections.abc import Sequence

import sh

from lvsfw.errors import BackendUnavailable, CommandFailed
from lvsfw.netns import check_netns


def netns_argv(argv: Sequence[str], netns: str | None) -> list[str]:
    """``argv`` prefixed to run inside network namespace ``netns`` (None: the current one)."""
    if netns is None:
        return list(argv)
    check_netns(netns)
    return ["ip", "netns", "exec", netns, *argv]


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    stdin: str | None = None,
    install_hint: str = "",
) -> str:
    """Run ``argv`` (in ``netns``) and return its stdout.

    Raises :class:`CommandFailed` with the tool's stderr on a non-zero exit status, and
    :class:`BackendUnavailable` (with ``install_hint``) when the program is not installed.
    """
    # Resolved here, not by ``ip netns exec``, which would turn a missing program into a
    # failure of ``ip`` itself (the namespace shares this filesystem).
    if shutil.which(argv[0], path=TOOL_PATH) is None:
        hint = f"; {install_hint}" if install_hint else ""
        raise BackendUnavailable(f"{argv[0]} not found{hint}")
    full = netns_argv(argv, netns)
    command = sh.Command(shutil.which(full[0], path=TOOL_PATH) or full[0])
    try:
        out = command(*full[1:], _in=stdin, _tty_out=False, _env=_ENV)
    except sh.ErrorReturnCode as exc:
        stderr = exc.stderr.decode(errors="replace") or exc.stdout.decode(errors="replace")
        raise CommandFailed(full, exc.exit_code, stderr) from None
    return str(out)


#: Where lvsfw looks for the kernel tools (and the PATH they run with), whatever the caller's.
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The tools' messages are parsed and shown: make them the same on every machine.
_ENV = {"PATH": TOOL_PATH, "LC_ALL": "C"}
