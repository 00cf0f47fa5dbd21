"""What the lvsfw.lvs modules share: their options, the bundles and the Director they build.

The modules run on the director and import lvsfw there (the interpreter Ansible runs them
with must be the one lvsfw is installed for: ``ansible_python_interpreter``). Bundles given
inline are turned into the TOML of ``[[bundle]]`` tables and loaded by ``lvsfw.config``, so
they are validated exactly like a config file and fail with the same one-line messages.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule

try:
    import tomli_w

    from lvsfw import assemble, config
    from lvsfw.errors import LvsfwError
    from lvsfw.output import plan_json, summary
except ImportError:
    HAS_LVSFW = False
    LVSFW_IMPORT_ERROR: Optional[str] = traceback.format_exc()

    class LvsfwError(Exception):  # type: ignore[no-redef]
        """Stands in for lvsfw's error class where lvsfw cannot be imported."""

else:
    HAS_LVSFW = True
    LVSFW_IMPORT_ERROR = None

#: The packet filter when neither the task, the config file nor the state file names one
#: (the ``lvsfw`` command's default too).
DEFAULT_FIREWALL = "nftables"
DEFAULT_LOCK_TIMEOUT = 60.0

#: The options of every lvsfw.lvs module that reads the director's kernel.
COMMON_OPTIONS: dict[str, dict[str, Any]] = {
    "config": {"type": "path"},
    "bundles": {"type": "list", "elements": "dict"},
    "firewall": {"type": "str"},
    "ipvs": {"type": "raw"},
    "netns": {"type": "str"},
    "node": {"type": "str"},
    "keepalived_conf": {"type": "path"},
    "state_file": {"type": "path"},
    "lock_dir": {"type": "path"},
    "lock_timeout": {"type": "float", "default": DEFAULT_LOCK_TIMEOUT},
    "ipvsadm": {"type": "path"},
}
MUTUALLY_EXCLUSIVE = [("config", "bundles")]


class ModuleError(Exception):
    """A failure to report as the task's ``msg`` (one line)."""


def one_line(exc: BaseException) -> str:
    """``exc`` and its notes on one line, as the ``lvsfw`` command prints its errors."""
    notes = [str(n) for n in getattr(exc, "__notes__", ())]
    text = "; ".join([str(exc), *notes]) or type(exc).__name__
    return " ".join(text.split())


def _toml_ready(value: Any, where: str) -> Any:
    """``value`` (from the task's YAML) as tomli_w writes it: keys set to null are left out,
    as a TOML table leaves a key out; a null anywhere else is an error naming its place."""
    if isinstance(value, dict):
        return {k: _toml_ready(v, f"{where}.{k}") for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_toml_ready(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None:
        raise ModuleError(f"{where}: null is not valid; leave the item out")
    return value


def bundles_from_tables(tables: list[dict[str, Any]]) -> tuple[Any, ...]:
    """The bundles of ``tables`` (``[[bundle]]`` tables as dicts), through ``lvsfw.config``.

    Errors are lvsfw's :class:`~lvsfw.config.ConfigError` messages, their place named as the
    task names it (``bundles[0] (web).ports: ...``) instead of a line of the generated TOML.
    """
    ready = [_toml_ready(t, f"bundles[{i}]") for i, t in enumerate(tables)]
    try:
        text = tomli_w.dumps({"bundle": ready})
    except (TypeError, ValueError) as exc:
        raise ModuleError(f"bundles: cannot be written as TOML tables: {exc}") from None
    try:
        return config.loads(text, "bundles").bundles
    except config.ConfigError as exc:
        where = f"{exc.path}:{exc.line}" if exc.line else exc.path
        what = f" {exc.field}:" if exc.field else ""
        reason = str(exc)[len(f"{where}:{what} ") :]
        field = (exc.field or "").replace("bundle[", "bundles[", 1)
        if field == "bundle":
            field = "bundles"
        raise ModuleError(f"{field or 'bundles'}: {reason}") from None


def _ipvs(value: Any) -> Any:
    """The ``ipvs`` option: a boolean templated into text (``"{{ false }}"`` is ``"False"``)
    is a boolean again; every other value is checked where the Director is built
    (:func:`lvsfw.assemble.service_half`, as for the command)."""
    if isinstance(value, str) and value.lower() in ("true", "yes", "false", "no"):
        return value.lower() in ("true", "yes")
    return value


def load(params: dict[str, Any]) -> tuple[Optional[tuple[Any, ...]], Any, Any]:
    """The bundles the task names (None when it names none), its director settings (a config
    file's ``[director]`` table, the task's options taking precedence) and the config's
    ``[cluster]`` (None: none)."""
    settings = config.DirectorSettings()
    bundles: Optional[tuple[Any, ...]] = None
    cluster = None
    if params.get("config"):
        loaded = config.load(params["config"])
        bundles, settings, cluster = loaded.bundles, loaded.director, loaded.cluster
    elif params.get("bundles") is not None:
        bundles = bundles_from_tables(params["bundles"])
    keys = ("firewall", "netns", "state_file", "node", "keepalived_conf")
    given = {k: params.get(k) for k in keys}
    return bundles, settings.merged(ipvs=_ipvs(params.get("ipvs")), **given), cluster


def director(params: dict[str, Any], settings: Any, cluster: Any = None,
             owned: bool = False) -> Any:  # fmt: skip
    """The :class:`lvsfw.Director` for the task, built as the ``lvsfw`` command builds it
    (:func:`lvsfw.assemble.build`): the packet filter the task or config names, else the one
    the state file records, else nftables (``owned``, for state=absent: the recorded one
    first unless the task names one); the service half ``ipvs`` names."""
    timeout = params["lock_timeout"]
    if not timeout >= 0:  # NaN too
        raise ModuleError(f"lock_timeout: {timeout!r} is not valid; expected seconds >= 0")
    return assemble.build(
        settings,
        cluster,
        owned=owned,
        firewall_given=params.get("firewall") is not None,
        lock_dir=params.get("lock_dir"),
        lock_timeout=timeout,
        ipvsadm=params.get("ipvsadm"),
    )


def fail_on_error(module: Any, exc: BaseException) -> None:
    """Fail the task with ``exc`` as one line: lvsfw's own message for its errors (and for
    OSError, as the ``lvsfw`` command does); anything else names its type, with the
    traceback kept out of ``msg`` (in ``exception``, shown with -vvv)."""
    if isinstance(exc, (LvsfwError, ModuleError, OSError)):
        module.fail_json(msg=one_line(exc))
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    msg = f"lvsfw: internal error: {type(exc).__name__}: {one_line(exc)}"
    module.fail_json(msg=msg, exception=text)


def require_lvsfw(module: Any) -> None:
    """Fail the task when lvsfw cannot be imported by the interpreter running the module."""
    if not HAS_LVSFW:
        module.fail_json(
            msg=f"lvsfw is not importable by {sys.executable}: install lvsfw for it, or set"
            " ansible_python_interpreter to the python of lvsfw's virtualenv",
            exception=LVSFW_IMPORT_ERROR,
        )


def run_module(run: Callable[[AnsibleModule], dict[str, Any]], **spec: Any) -> None:
    """A module's whole entry point: an :class:`AnsibleModule` taking ``spec`` (check mode
    supported, ``config`` and ``bundles`` mutually exclusive), lvsfw required, the task's
    result ``run(module)``; any failure is one line in ``msg`` (:func:`fail_on_error`)."""
    module = AnsibleModule(mutually_exclusive=MUTUALLY_EXCLUSIVE, supports_check_mode=True, **spec)
    require_lvsfw(module)
    try:
        result = run(module)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line in msg
        fail_on_error(module, exc)
    module.exit_json(**result)


def drift_json(report: Any) -> list[dict[str, str]]:
    """The findings of a :class:`lvsfw.Report` as ``lvsfw verify --json`` lists them."""
    return [{"kind": d.kind, "bundle": d.bundle, "detail": d.detail} for d in report.drift]


def drift_message(report: Any) -> str:
    """A failed verify's ``msg``: how many findings, then each drift line, on one line."""
    lines = "; ".join(str(d) for d in report.drift)
    return f"drift: {len(report.drift)} finding(s): {lines}"


def plan_result(plan: Any) -> dict[str, Any]:
    """The result keys describing a :class:`lvsfw.Plan`: ``changed`` exactly when it is not
    empty, its text (``plan``, ``plan_lines``), ``changes`` (``lvsfw plan --json``) and
    ``summary``."""
    text = str(plan)
    return {
        "changed": bool(plan),
        "plan": text,
        "plan_lines": text.splitlines() if plan else [],
        "changes": plan_json(plan),
        "summary": summary(plan),
    }
