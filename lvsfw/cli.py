"""The ``lvsfw`` command: check, render, plan, apply, verify, show, destroy, save, import.

Exit codes (every command): 0 success / no change / no drift; 1 error (one line on stderr,
never a traceback: bad files, bad flags, kernel tools refusing); 2 ``plan``: changes
pending; 3 ``verify``: drift. ``--json`` prints one JSON document on stdout instead of text.
"""

from __future__ import annotations

import functools
import gc
import json
import sys
from collections.abc import Sequence
from typing import Any, Callable, Optional, TypeVar

import attrs
import click

from lvsfw import assemble, cli_fleet, config, registry, state
from lvsfw.backends.karun import DEFAULT_CONF
from lvsfw.backends.keepalived import Keepalived
from lvsfw.director import Director
from lvsfw.drift import Report
from lvsfw.errors import LvsfwError
from lvsfw.importers.command import import_command
from lvsfw.model import mark_text
from lvsfw.output import (
    Up,
    plan_json,
    ports_text,
    rule_json,
    service_json,
    services_table,
    summary,
    table,
)
from lvsfw.rules import FwmarkService, normalize, specify

EXIT_OK, EXIT_ERROR, EXIT_PENDING, EXIT_DRIFT = 0, 1, 2, 3
#: How many bundle names ``lvsfw check`` prints (``--json`` lists them all).
SHOWN = 10
DEFAULT_FIREWALL, DEFAULT_LOCK_TIMEOUT = assemble.DEFAULT_FIREWALL, assemble.DEFAULT_LOCK_TIMEOUT
F = TypeVar("F", bound=Callable[..., Any])


def _one_line(exc: BaseException) -> str:
    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    text = "; ".join([str(exc), *notes]) or type(exc).__name__
    return " ".join(text.split())


class LvsfwGroup(click.Group):
    """A group whose every failure is one line on stderr and exit status 1.

    Click's own usage errors exit 1 too (not click's 2, which ``plan`` uses for "pending").
    """

    def main(
        self,
        args: Optional[Sequence[str]] = None,
        prog_name: Optional[str] = None,
        complete_var: Optional[str] = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
            code = result if isinstance(result, int) else EXIT_OK
        except click.exceptions.Abort:
            click.echo("lvsfw: aborted", err=True)
            code = EXIT_ERROR
        except click.ClickException as exc:
            click.echo(f"lvsfw: {_one_line(exc)}", err=True)
            code = EXIT_ERROR
        except (LvsfwError, OSError) as exc:
            click.echo(f"lvsfw: {_one_line(exc)}", err=True)
            code = EXIT_ERROR
        if standalone_mode:
            sys.exit(code)
        return code


def _emit(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def json_option(f: F) -> F:
    """``--json``: one JSON document on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(f)


def _lock_timeout(ctx: click.Context, param: click.Parameter, value: Optional[float]) -> float:
    """``--lock-timeout``: seconds >= 0 (inf: wait for ever); NaN and negatives refused."""
    if value is None:
        return DEFAULT_LOCK_TIMEOUT
    if not value >= 0:  # also catches NaN, which would wait for ever
        raise click.BadParameter(
            f"--lock-timeout: {value!r} is not valid; expected seconds >= 0 (0: fail at once if "
            "another lvsfw run holds the lock)",
            ctx,
            param,
        )
    return value


def kernel_options(f: F) -> F:
    """The options of every command that touches the kernel; they override [director]."""
    options = [
        click.option("--netns", metavar="NAME", help="Work inside network namespace NAME."),
        click.option(
            "--firewall",
            metavar="BACKEND",
            help="Packet filter: nftables, iptables-nft, iptables-legacy or auto.",
        ),
        click.option("--ipvs", type=click.Choice(config.IPVS_MODES), is_flag=False,
                     flag_value="ipvsadm", default=None, help="Who runs IPVS: ipvsadm (lvsfw,"
                     " the default), keepalived (from lvsfw's keepalived.conf) or none."),
        click.option("--no-ipvs", is_flag=True, default=False, help="Marks only (--ipvs none)."),
        click.option("--node", metavar="NAME", help="keepalived: this director's [cluster] node."),
        click.option("--keepalived-conf", metavar="PATH", help="keepalived: the file lvsfw "
                     f"writes (default {DEFAULT_CONF})."),
        click.option("--state-file", metavar="PATH", help="Where lvsfw records what it owns."),
        click.option("--ipvsadm", metavar="PATH", hidden=True, help="ipvsadm program to run."),
        click.option("--lock-dir", metavar="DIR", hidden=True, help="Where the lock file lives."),
        click.option(
            "--lock-timeout",
            type=float,
            default=DEFAULT_LOCK_TIMEOUT,
            show_default=True,
            metavar="SECONDS",
            callback=_lock_timeout,
            help="How long to wait for another lvsfw run (0: fail at once if one holds the lock).",
        ),
    ]
    return functools.reduce(lambda g, option: option(g), reversed(options), f)


def _settings(cfg: Optional[config.Config], flags: dict[str, Any]) -> config.DirectorSettings:
    base = cfg.director if cfg is not None else config.DirectorSettings()
    keys = ("netns", "firewall", "ipvs", "state_file", "keepalived_conf", "node")
    given = {k: flags.get(k) for k in keys}
    if flags.get("no_ipvs"):
        given["ipvs"] = "none"
    return base.merged(**given)


def _director(cfg: Optional[config.Config], flags: dict[str, Any], owned: bool = False) -> Director:
    """The Director for ``cfg`` and the flags (:func:`lvsfw.assemble.build`). ``owned`` (show,
    destroy: about what lvsfw owns now): without --firewall, the recorded packet filter first."""
    timeout = flags.get("lock_timeout")
    return assemble.build(
        _settings(cfg, flags),
        cfg.cluster if cfg is not None else None,
        owned=owned,
        firewall_given=flags.get("firewall") is not None,
        lock_dir=flags.get("lock_dir"),
        lock_timeout=DEFAULT_LOCK_TIMEOUT if timeout is None else float(timeout),  # 0: at once
        ipvsadm=flags.get("ipvsadm"),
    )


def _notes(director: Director) -> None:
    """What the service half wants the admin to know (keepalived not running...): stderr."""
    for note in director.services.notes:
        click.echo(f"lvsfw: {note}", err=True)


# -- commands ---------------------------------------------------------------------------------

CONFIG = click.argument("file", metavar="FILE", type=click.Path(dir_okay=False))


@click.group(cls=LvsfwGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lvsfw", prog_name="lvsfw")
def cli() -> None:
    """Firewall marks and IPVS fwmark services for LVS directors, kept in agreement.

    FILE is a TOML config: [[bundle]] tables and a [director] table. Exit status: 0 ok,
    1 error, 2 changes pending (plan), 3 drift (verify).
    """


@cli.command()
@CONFIG
@json_option
def check(file: str, as_json: bool) -> None:
    """Validate FILE and check its bundles for conflicts; no kernel access."""
    cfg = config.load(file)
    spec = specify(cfg.bundles)  # conflict-checked, services included (by mark)
    names = [b.name for b in cfg.bundles]
    # one IPVS service per (family, mark): counted without building them
    services = len({(f, b.mark.value) for b in cfg.bundles for f in b.families})
    if as_json:
        _emit({"ok": True, "file": file, "bundles": names, "mark_rules": len(spec.rules),
               "ipvs_services": services})  # fmt: skip
        return
    shown = ", ".join(names[:SHOWN]) + (f", ... {len(names) - SHOWN} more" if names[SHOWN:] else "")
    click.echo(f"{file}: ok: {len(names)} bundle(s) ({shown or 'none'}), "
               f"{len(spec.rules)} mark rule(s), {services} IPVS service(s)")  # fmt: skip


@cli.command()
@CONFIG
@click.option(
    "--backend",
    "-b",
    metavar="NAME",
    help=f"One of: {', '.join(registry.BUILTIN)} (default: the file's firewall).",
)
@click.option("--part", metavar="NAME", help="Print part NAME alone: one tool's input, as is.")
@click.option("--node", metavar="NAME", help="keepalived: the whole keepalived.conf of NAME.")
@json_option
def render(
    file: str, backend: Optional[str], part: Optional[str], node: Optional[str], as_json: bool
) -> None:
    """Print what BACKEND would load for FILE; no kernel access.

    Every part, combined for reading; with --part, one part alone, to pipe into the command
    loading it (an empty part, such as ip6tables without IPv6 rules, loads nothing):

    \b
    iptables-*: ipset      ipset -exist restore (first)
                iptables   iptables-legacy-restore --noflush (-nft: iptables-nft-restore)
                ip6tables  ip6tables-legacy-restore --noflush (-nft: ip6tables-nft-restore)
    nftables:   nft        nft -f -
    ipvs:       ipvsadm    ipvsadm -R
    keepalived: keepalived include it from keepalived.conf (with --node NAME: the whole
                           keepalived.conf of director NAME of the [cluster] table)
    """
    cfg = config.load(file)
    name = backend or cfg.director.firewall or DEFAULT_FIREWALL
    if name == "auto":
        raise click.UsageError("render needs a named --backend, not auto")
    if node is not None and name != "keepalived":
        raise click.UsageError("--node goes with --backend keepalived")
    chosen = Keepalived(cluster=cfg.cluster, node=node) if node else registry.get(name)()
    rendered = chosen.render_parts(specify(cfg.bundles))
    text = str(rendered) if part is None else rendered.part(part)
    if as_json:
        parts = [{"name": n, "text": t} for n, t in rendered.parts]
        _emit({"backend": name, "text": text, **({"part": part} if part else {"parts": parts})})
    else:
        click.echo(text, nl=part is None and not text.endswith("\n"))


@cli.command()
@CONFIG
@kernel_options
@json_option
@click.option("--verbose", "-v", is_flag=True, help="Also print what would be sent, exactly.")
def plan(file: str, as_json: bool, verbose: bool, **flags: Any) -> None:
    """Show how the live kernel differs from FILE. Exit 0: no change; 2: changes pending."""
    cfg = config.load(file)
    director = _director(cfg, flags)
    result = director.plan(cfg.bundles)
    _notes(director)
    if as_json:
        _emit(plan_json(result))
    else:
        click.echo(str(result) if not result else f"{result}\nplan: {summary(result)}")
        for name, script in result.scripts if verbose else ():
            click.echo(f"# {name}\n{script.rstrip()}")
    click.get_current_context().exit(EXIT_PENDING if result else EXIT_OK)


@cli.command()
@CONFIG
@kernel_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def apply(file: str, yes: bool, as_json: bool, **flags: Any) -> None:
    """Make the live marks and IPVS services equal FILE; prints what it did."""
    with cli_fleet.recording(lambda: _state_file(file, flags), _one_line) as record:
        _apply(file, yes, as_json, flags, record)  # how it ended, for lvsfw metrics


def _state_file(file: str, flags: dict[str, Any]) -> str:
    """The state file an apply of FILE with ``flags`` uses, for an apply that failed before
    its Director was built (FILE unreadable: the flags')."""
    try:
        cfg: Optional[config.Config] = config.load(file)
    except LvsfwError:
        cfg = None
    return assemble.state_file(_settings(cfg, flags))


def _apply(
    file: str, yes: bool, as_json: bool, flags: dict[str, Any], record: cli_fleet.Record
) -> None:
    cfg = config.load(file)
    director = _director(cfg, flags)
    record.state_file = director.state_file  # known now: the record need not load FILE again
    if not yes:
        if as_json:
            raise click.UsageError("--json needs --yes (there is no one to ask)")
        pending = director.plan(cfg.bundles)
        if pending:
            click.echo(f"{pending}\nplan: {summary(pending)}")
            click.confirm("Apply these changes?", abort=True)
    done = director.apply(cfg.bundles)
    _notes(director)
    if as_json:
        _emit(plan_json(done))
    elif done:
        click.echo("\n".join(f"done: {line}" for line in str(done).splitlines()))
        click.echo(f"applied: {summary(done)}")
    else:
        click.echo("no changes")


@cli.command()
@CONFIG
@kernel_options
@json_option
def verify(file: str, as_json: bool, **flags: Any) -> None:
    """Read the live kernel back and report drift from FILE. Exit 0: clean; 3: drift."""
    cfg = config.load(file)
    report: Report = _director(cfg, flags).verify(cfg.bundles)
    if as_json:
        down = [{**attrs.asdict(d), "family": str(d.family), "address": str(d.address)}
                for d in report.down]  # fmt: skip
        _emit({"ok": report.ok, "drift": [attrs.asdict(d) for d in report.drift], "down": down})
    else:
        click.echo("\n".join(["ok: no drift", *map(str, report.down)]) if report.ok
                   else f"{report}\ndrift: {len(report.drift)}")  # fmt: skip
    click.get_current_context().exit(EXIT_OK if report.ok else EXIT_DRIFT)


def _optional_config(path: Optional[str]) -> Optional[config.Config]:
    return config.load(path) if path else None


CONFIG_OPTION = click.option(
    "--config",
    "-c",
    "config_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Take [director] settings from FILE.",
)


@cli.command(help=cli_fleet.SHOW_HELP)
@click.argument("file", metavar="[FILE]", required=False, type=click.Path(dir_okay=False))
@CONFIG_OPTION
@kernel_options
@json_option
@click.option("--format", "fmt", type=click.Choice(cli_fleet.FORMATS), default="text",
              show_default=True, help="text: what lvsfw owns; dot, svg: a picture of FILE.")
@click.option("--live", is_flag=True, help="dot, svg: drift in red, down servers in grey.")
def show(
    file: Optional[str], config_file: Optional[str], as_json: bool, fmt: str, live: bool,
    **flags: Any,
) -> None:  # fmt: skip
    if fmt != "text":
        cli_fleet.draw(file, config_file, as_json=as_json, fmt=fmt, live=live,
                       director_for=lambda c: _director(c, flags))  # fmt: skip
        return
    if live:
        raise click.UsageError("--live is for --format dot or svg")
    if file is not None and config_file is not None:
        raise click.UsageError("give FILE or -c FILE, not both")
    director = _director(_optional_config(file or config_file), flags, owned=True)
    snapshots = director.snapshots()  # every packet filter that may hold lvsfw's rules
    where_rule = {r: name for name, snap in snapshots.items() for r in normalize(snap.rules)}
    owners = {r: o for snap in snapshots.values() for r, o in snap.owners.items()}
    rules = sorted(where_rule)
    others = [n for n, snap in snapshots.items() if snap.rules and n != director.firewall.name]
    owned = state.load(director.state_file)
    services: list[FwmarkService] = []
    up: Up = None
    if director.ipvs is not None and owned.services:
        observed = director.ipvs.observe(owned.services)
        services = sorted(s for s in observed.services if (s.family, s.mark) in owned.services)
        if director.ipvs.health_checked:  # keepalived: which real servers are in IPVS now
            up = {(s.family, s.mark): frozenset(r.address for r in s.service.real_servers)
                  for s in director.ipvs.table(observed)}  # fmt: skip
    if as_json:
        _emit(
            {
                "firewall": director.firewall.name,
                "netns": director.netns,
                "state_file": director.state_file,
                "rules": [
                    {**rule_json(r), "bundle": owners.get(r), "firewall": where_rule[r]}
                    for r in rules
                ],
                "services": [service_json(s, up) for s in services],
            }
        )
        return
    where = f" in netns {director.netns}" if director.netns else ""
    click.echo(f"firewall {director.firewall.name}{where}; state {director.state_file}")
    for name in others:
        click.echo(f"also in {name}: rules left by an interrupted apply; destroy removes them")
    if not rules and not services:
        click.echo("lvsfw owns nothing here")
        return
    rows: dict[tuple[str, str, str, str], list[str]] = {}
    for r in rules:
        mark = mark_text(r.mark, r.mask)
        key = (owners.get(r) or "-", mark, str(r.vip), str(r.protocol))
        rows.setdefault(key, []).append(ports_text(r))
    click.echo(
        table(
            ("BUNDLE", "MARK", "VIP", "PROTO", "PORTS"),
            ((*key, ",".join(ports)) for key, ports in rows.items()),
        )
    )
    if services:
        click.echo()
        click.echo(services_table(services, up))


@cli.command()
@CONFIG_OPTION
@kernel_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def destroy(config_file: Optional[str], yes: bool, as_json: bool, **flags: Any) -> None:
    """Remove every mark rule and IPVS service lvsfw owns, and nothing else."""
    director = _director(_optional_config(config_file), flags, owned=True)
    if not yes:
        if as_json:
            raise click.UsageError("--json needs --yes (there is no one to ask)")
        click.confirm("Remove every mark rule and IPVS service lvsfw owns?", abort=True)
    done = director.destroy()
    _notes(director)
    if as_json:
        _emit(plan_json(done))
    else:
        click.echo("\n".join(f"done: {line}" for line in str(done).splitlines()))


@cli.command()
@CONFIG
@click.argument("directory", type=click.Path(file_okay=False))
@kernel_options
@json_option
def save(file: str, directory: str, as_json: bool, **flags: Any) -> None:
    """Write the files a boot script restores for FILE (nft -f / iptables-restore /
    ipvsadm-restore input) into DIRECTORY."""
    cfg = config.load(file)
    paths = _director(cfg, flags).save(cfg.bundles, directory)
    if as_json:
        _emit({"files": paths})
    else:
        click.echo("\n".join(paths))


cli.add_command(import_command)  # its body: lvsfw/importers/command.py


@cli.command()
@click.argument("file", metavar="[FILE]", required=False, type=click.Path(dir_okay=False))
@kernel_options
@click.option("--textfile", metavar="PATH", type=click.Path(dir_okay=False),
              help="Write them to PATH atomically (node_exporter's textfile collector, *.prom).")
def metrics(file: Optional[str], textfile: Optional[str], **flags: Any) -> None:
    """Print Prometheus metrics: bundles, drift, the last apply, IPVS counters.

    With FILE, also its bundles and verify's drift findings by bundle and kind (0 when
    clean). Without, what lvsfw owns now. A part that cannot be read (the IPVS table, the
    kernel's rules) is left out, marked lvsfw_collector_success 0, named on stderr, and the
    exit status is 1; the other metrics are still written.
    """
    cfg = config.load(file) if file else None
    if not cli_fleet.metrics_out(_director(cfg, flags, owned=cfg is None), cfg, textfile):
        click.get_current_context().exit(EXIT_ERROR)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script."""
    try:
        return int(cli.main(args=list(argv) if argv is not None else None, prog_name="lvsfw"))
    finally:  # the process ends now: its last collection need not walk 10,000 bundles
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
