"""The bodies of the ``lvsfw`` commands for watching a fleet: ``metrics``, ``show --format
dot|svg [--live]``, and the last apply's record that ``apply`` leaves for ``metrics``.

:mod:`lvsfw.cli` declares the commands and hands these functions what they need from it
(the Director factory, the settings), so this module never imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable, Optional

import click

from lvsfw import config, metrics, picture
from lvsfw.director import Director
from lvsfw.errors import LvsfwError

FORMATS = ("text", "dot", "svg")
SHOW_HELP = """Show what lvsfw owns now: its mark rules and IPVS services.

With FILE and --format dot: a Graphviz picture of FILE's bundles (VIPs and ports -> mark ->
IPVS service per family -> real servers with weight), without kernel access; --live adds the
live kernel's word: drift in red, real servers that are down in grey. --format svg renders it
through Graphviz's dot (apt-get install graphviz)."""
#: Builds the Director for a config (or none) and the command's flags (lvsfw.cli._director).
DirectorFor = Callable[..., Director]


def metrics_out(director: Director, cfg: Optional[config.Config], textfile: Optional[str]) -> bool:
    """Print (or write to ``textfile`` atomically) the metrics; False when a part could not
    be read (named on stderr; the other metrics are still written)."""
    snapshot = metrics.collect(director, cfg.bundles if cfg is not None else None)
    if textfile:
        metrics.write_textfile(textfile, snapshot)
    else:
        click.echo(metrics.exposition(snapshot), nl=False)
    if snapshot.errors:
        parts = "; ".join(f"{part}: {message}" for part, message in snapshot.errors.items())
        click.echo(f"lvsfw: metrics incomplete: {parts}", err=True)
    return not snapshot.errors


def draw(
    file: Optional[str],
    config_file: Optional[str],
    *,
    as_json: bool,
    fmt: str,
    live: bool,
    director_for: Callable[[config.Config], Director],
) -> None:
    """``show FILE --format dot|svg [--live]``: the picture of FILE's bundles."""
    if file is None:
        raise click.UsageError(f"--format {fmt} needs FILE, the config to draw")
    if as_json or config_file:
        raise click.UsageError(f"--format {fmt} takes neither --json nor -c")
    cfg = config.load(file)
    observed = picture.observe(director_for(cfg), cfg.bundles) if live else None
    text = picture.dot(cfg.bundles, observed)
    click.echo(picture.svg(text) if fmt == "svg" else text, nl=False)


class Record:
    """Where the apply inside :func:`recording` records how it ended: ``state_file`` once
    the apply knows it (its Director's), else found by the fallback (the config did not load)."""

    def __init__(self) -> None:
        self.state_file: Optional[str] = None


@contextlib.contextmanager
def recording(
    fallback: Callable[[], str], one_line: Callable[[BaseException], str]
) -> Iterator[Record]:
    """Record how the ``apply`` inside ended next to its state file (``Record.state_file``,
    set by the apply; else ``fallback()``). A failure to record is a warning after a
    successful apply, and silent after a failed one (whose own error stays the one line on
    stderr); a declined prompt is no apply."""
    record = Record()
    try:
        yield record
    except (LvsfwError, OSError) as exc:
        _record(lambda: record.state_file or fallback(), False, one_line(exc), one_line)
        raise
    _record(lambda: record.state_file or fallback(), True, None, one_line)


def _record(
    state_file: Callable[[], str], ok: bool, error: Optional[str], one_line: Callable[[Any], str]
) -> None:
    try:
        metrics.record_apply(state_file(), ok, error)
    except (LvsfwError, OSError) as exc:
        if ok:
            click.echo(f"lvsfw: warning: cannot record the apply: {one_line(exc)}", err=True)
