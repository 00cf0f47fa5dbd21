"""The Ansible collection ``lvsfw.lvs`` (ansible/ansible_collections/lvsfw/lvs): built with
``ansible-galaxy``, documented for ``ansible-doc``, and run for real by ``ansible-playbook -i
localhost, -c local`` against throwaway network namespaces, the IPVS half through the fake
``ipvsadm`` (this host has no IPVS).

One play runs the whole life of a director (check mode, apply, re-run, broken bundles, verify,
drift, repair, absent) with a JSON stdout callback (tests/ansible_plugins: ansible-core has
no ``json`` callback of its own); each test below asserts one step of its parsed result.
Without ansible-core the tests skip, or fail under ``LVSFW_REQUIRE_KERNEL=1`` (as kernel
tests do), since ansible-core is in the test extra.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from lvsfw import config
from tests import fake_ipvsadm
from tests.netlab import LabError, ensure_kernel, require_kernel, run
from tests.test_director import FOREIGN_NFT

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / "ansible"
COLLECTION = COLLECTIONS / "ansible_collections" / "lvsfw" / "lvs"
EXAMPLE = COLLECTIONS / "examples" / "ha-pair.yml"
BIN = Path(sys.executable).parent
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, without lvsfw
PATH = f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

WEB_TOML = """\
[[bundle]]
name = "web"
vips = ["192.0.2.10", "2001:db8::10"]
ports = "tcp:80,443"
mark = 80
persistence = 300
real_servers = ["10.0.0.11", { address = "2001:db8:1::11", weight = 2 }]

[[bundle]]
name = "dns"
vips = "192.0.2.53"
ports = "tcp:53 udp:53"
mark = 53
scheduler = "rr"
real_servers = ["10.0.0.21"]
"""
#: The same bundles as WEB_TOML, as a task's ``bundles`` option writes them.
WEB_TABLES: list[dict[str, Any]] = [
    {
        "name": "web",
        "vips": ["192.0.2.10", "2001:db8::10"],
        "ports": "tcp:80,443",
        "mark": 80,
        "persistence": 300,
        "real_servers": ["10.0.0.11", {"address": "2001:db8:1::11", "weight": 2}],
    },
    {
        "name": "dns",
        "vips": "192.0.2.53",
        "ports": ["tcp:53", "udp:53"],
        "mark": 53,
        "scheduler": "rr",
        "persistence_netmask": None,  # null: left out, as a TOML table leaves it out
        "real_servers": ["10.0.0.21"],
    },
]
BROKEN_TABLES = [{"name": "web", "vips": "192.0.2.10", "ports": "tcp:99999", "mark": 80}]
BROKEN_TOML = '[[bundle]]\nname = "web"\nvips = "192.0.2.10"\nports = "tcp:80"\nmark = "x"\n'


def tool(name: str) -> Path:
    """The venv's ansible program ``name``: missing skips, or fails under
    LVSFW_REQUIRE_KERNEL=1 (ansible-core is in setup.cfg's test extra)."""
    path = BIN / name
    if not path.exists():
        require_kernel(
            f"{path} is missing: .venv/bin/pip install ansible-core (in the test extra;"
            " ./scripts/bootstrap installs it)"
        )
    return path


def ansible_env(tmp: Path) -> dict[str, str]:
    """An environment for ansible programs: this checkout's collection only, every file
    ansible writes under ``tmp``, no user or system ansible.cfg, JSON output."""
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    (tmp / "ansible.cfg").write_text("[defaults]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        PATH=PATH,
        LC_ALL="C.UTF-8",
        ANSIBLE_CONFIG=str(tmp / "ansible.cfg"),
        ANSIBLE_HOME=str(tmp / "home"),
        ANSIBLE_LOCAL_TEMP=str(tmp / "local"),
        ANSIBLE_REMOTE_TEMP=str(tmp / "remote"),
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
        ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "ansible_plugins" / "callback"),
        ANSIBLE_STDOUT_CALLBACK="lvsfw_json",  # ansible.posix's json, which core lacks
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="false",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    return env


def ansible(tmp: Path, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an ansible program of the venv with :func:`ansible_env`."""
    return subprocess.run(
        [str(tool(program)), *args],
        env=ansible_env(tmp),
        cwd=tmp,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def playbook(
    tmp: Path, plays: list[dict[str, Any]], *args: str, inventory: str = "localhost,"
) -> dict[str, Any]:
    """Run ``plays`` (written as JSON, which is YAML) with ``ansible-playbook -c local``; the
    parsed output of the json callback."""
    path = tmp / f"play-{secrets.token_hex(3)}.yml"
    path.write_text(json.dumps(plays, indent=1))
    return run_playbook(tmp, path, "-i", inventory, "-c", "local", *args)


def run_playbook(tmp: Path, path: Path, *args: str) -> dict[str, Any]:
    """``ansible-playbook PATH ARGS``; its json callback's document."""
    done = ansible(tmp, "ansible-playbook", str(path), *args)
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        pytest.fail(
            f"ansible-playbook printed no JSON (exit {done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return result


def by_task(output: dict[str, Any], host: str = "localhost") -> dict[str, dict[str, Any]]:
    """Each task's result on ``host``, by task name."""
    return {
        task["task"]["name"]: task["hosts"][host]
        for play in output["plays"]
        for task in play["tasks"]
        if host in task["hosts"]
    }


def netns_add() -> str:
    """A fresh namespace ``lvsfw-t-<hex>`` (lo up); the caller deletes it."""
    name = f"lvsfw-t-{secrets.token_hex(4)}"
    try:
        run(["ip", "netns", "add", name])
    except LabError as exc:
        require_kernel(f"cannot create a network namespace: {exc}")
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    return name


def in_netns(name: str, *argv: str, stdin: str | None = None) -> str:
    """Run ``argv`` inside namespace ``name``."""
    return run(["ip", "netns", "exec", name, *argv], stdin=stdin)


# -- without a kernel -------------------------------------------------------------------------


def test_galaxy_build(tmp_path: Path) -> None:
    done = ansible(
        tmp_path, "ansible-galaxy", "collection", "build", str(COLLECTION), "--output-path", "out"
    )
    assert done.returncode == 0, done.stderr
    built = tmp_path / "out" / "lvsfw-lvs-0.1.0.tar.gz"
    assert built.exists(), done.stdout
    with tarfile.open(built) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    assert {
        "README.md",
        "meta/runtime.yml",
        "plugins/modules/bundles.py",
        "plugins/modules/verify.py",
        "plugins/module_utils/common.py",
    } <= names
    assert not any("__pycache__" in n for n in names)
    assert manifest["collection_info"]["namespace"] == "lvsfw"
    assert manifest["collection_info"]["name"] == "lvs"


def _module(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Import ``ansible_collections.lvsfw.lvs.plugins.modules.NAME`` from this checkout."""
    tool("ansible-playbook")  # ansible-core present (the modules import it)
    monkeypatch.syspath_prepend(str(COLLECTIONS))
    return importlib.import_module(f"ansible_collections.lvsfw.lvs.plugins.modules.{name}")


def test_ansible_doc_matches_argument_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = ansible(tmp_path, "ansible-doc", "--json", "lvsfw.lvs.bundles", "lvsfw.lvs.verify")
    assert done.returncode == 0, done.stderr
    docs = json.loads(done.stdout)
    common = _module("bundles", monkeypatch).common
    specs = {
        "lvsfw.lvs.bundles": _module("bundles", monkeypatch)._argument_spec(),
        "lvsfw.lvs.verify": dict(common.COMMON_OPTIONS),
    }
    for name, spec in specs.items():
        doc = docs[name]["doc"]
        assert doc["options"].keys() == spec.keys(), name
        for option, wanted in spec.items():
            documented = doc["options"][option]
            assert documented["type"] == wanted["type"], (name, option)
            assert documented.get("default") == wanted.get("default"), (name, option)
            assert documented.get("choices") == wanted.get("choices"), (name, option)
            assert documented.get("elements") == wanted.get("elements"), (name, option)
        assert docs[name]["examples"] and docs[name]["return"], name


def test_inline_bundles_are_loaded_as_toml(monkeypatch: pytest.MonkeyPatch) -> None:
    common = _module("bundles", monkeypatch).common
    assert common.bundles_from_tables(WEB_TABLES) == config.loads(WEB_TOML).bundles
    assert common.bundles_from_tables([]) == ()
    # the same validation and message as a file, its place named as the task names it
    toml = '[[bundle]]\nname = "web"\nvips = "192.0.2.10"\nports = "tcp:99999"\nmark = 80\n'
    with pytest.raises(config.ConfigError) as from_file:
        config.loads(toml, "f.toml")
    with pytest.raises(common.ModuleError) as inline:
        common.bundles_from_tables(BROKEN_TABLES)
    assert str(from_file.value).startswith("f.toml:4: bundle[0] (web).ports: ")
    tail = str(from_file.value)[len("f.toml:4: bundle") :]
    assert str(inline.value) == f"bundles{tail}"
    with pytest.raises(common.ModuleError, match=r"^bundles\[0\]\.vips\[1\]: null is not"):
        common.bundles_from_tables([{"name": "a", "vips": ["192.0.2.1", None]}])
    with pytest.raises(common.ModuleError, match=r"^bundles: conflict: "):
        common.bundles_from_tables([WEB_TABLES[0], {**WEB_TABLES[0], "name": "web2"}])


def _tasks(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (module, options) of an lvsfw.lvs module in a parsed play or task list."""
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key.startswith("lvsfw.lvs."):
                yield key, value
            elif key in ("tasks", "block"):
                yield from _tasks(value)


def test_examples_use_documented_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml  # ansible-core's dependency

    bundles = _module("bundles", monkeypatch)
    verify = _module("verify", monkeypatch)
    known = {
        "lvsfw.lvs.bundles": bundles._argument_spec(),
        "lvsfw.lvs.verify": verify.common.COMMON_OPTIONS,
    }
    readme = (COLLECTION / "README.md").read_text() + (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    sources = [bundles.EXAMPLES, verify.EXAMPLES, EXAMPLE.read_text(), *blocks]
    found = [task for text in sources for task in _tasks(yaml.safe_load(text))]
    assert len(found) >= 10
    for module, options in found:
        assert set(options) <= set(known[module]), (module, options)


# -- a director's life, for real --------------------------------------------------------------


class Life:
    """The play's results by task name, and what the test read around it."""

    def __init__(self, results: dict[str, dict[str, Any]], ipvs: Path, state_file: Path) -> None:
        self.results = results
        self.ipvs = ipvs
        self.state_file = state_file

    def __getitem__(self, task: str) -> dict[str, Any]:
        if task not in self.results:
            pytest.fail(f"task {task!r} did not run; ran: {', '.join(self.results)}")
        return self.results[task]


def _life_tasks(ns: str, tmp: Path, ipvsadm: Path) -> list[dict[str, Any]]:
    common = {
        "netns": ns,
        "state_file": str(tmp / "state.json"),
        "lock_dir": str(tmp),
        "ipvsadm": str(ipvsadm),
    }
    toml = str(tmp / "lvsfw.toml")

    def bundles(name: str, **options: Any) -> dict[str, Any]:
        return {"name": name, "lvsfw.lvs.bundles": {**common, **options}}

    def verify(name: str, **options: Any) -> dict[str, Any]:
        return {"name": name, "lvsfw.lvs.verify": {**common, **options}}

    def shell(name: str, *argv: str) -> dict[str, Any]:
        return {
            "name": name,
            "ansible.builtin.command": {"argv": list(argv)},
            "changed_when": "false",
        }

    ruleset = ("ip", "netns", "exec", ns, "nft", "list", "ruleset")
    ipvs_state = ("cat", str(ipvsadm.parent / "ipvs.json"))
    failing = {"ignore_errors": True}
    return [
        {**bundles("check", config=toml), "check_mode": True, "diff": True},
        shell("ruleset after check", *ruleset),
        shell("ipvs after check", *ipvs_state),
        {"name": "state after check", "ansible.builtin.stat": {"path": common["state_file"]}},
        bundles("apply", config=toml),
        shell("ruleset after apply", *ruleset),
        shell("ipvs after apply", *ipvs_state),
        bundles("re-run inline", bundles=WEB_TABLES),
        {**bundles("check clean", config=toml), "check_mode": True, "diff": True},
        {**bundles("broken inline", bundles=BROKEN_TABLES), **failing},
        {**bundles("broken file", config=str(tmp / "broken.toml")), **failing},
        {**bundles("node", config=toml, node="lb1"), **failing},
        {
            **bundles("no lvsfw", config=toml),
            "vars": {"ansible_python_interpreter": SYSTEM_PYTHON},
            **failing,
        },
        verify("verify", config=toml),
        shell("drift", "ip", "netns", "exec", ns, "nft", "flush", "table", "inet", "lvsfw"),
        {**verify("verify drift", bundles=WEB_TABLES), **failing},
        bundles("repair", config=toml, verify=True),
        {**bundles("absent check", state="absent"), "check_mode": True},
        bundles("absent", state="absent", verify=True),
        shell("ruleset after absent", *ruleset),
        shell("ipvs after absent", *ipvs_state),
        bundles("absent again", state="absent"),
        verify("verify nothing", bundles=[]),
    ]


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Life]:
    """One play through a director's life in a throwaway namespace (deleted afterwards)."""
    ensure_kernel()
    tool("ansible-playbook")
    tmp = tmp_path_factory.mktemp("ansible")
    (tmp / "lvsfw.toml").write_text(WEB_TOML)
    (tmp / "broken.toml").write_text(BROKEN_TOML)
    ipvsadm = fake_ipvsadm.install(tmp / "ipvs")
    ns = netns_add()
    try:
        in_netns(ns, "nft", "-f", "-", stdin=FOREIGN_NFT)
        plays = [
            {
                "name": "a director's life",
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": _life_tasks(ns, tmp, ipvsadm),
            }
        ]
        yield Life(by_task(playbook(tmp, plays)), ipvsadm, tmp / "state.json")
    finally:
        run(["ip", "netns", "delete", ns], check=False)


def _one_line_failure(result: dict[str, Any]) -> str:
    assert result.get("failed") is True, result
    msg = result["msg"]
    assert isinstance(msg, str) and "\n" not in msg and "Traceback" not in msg, msg
    # ansible-core 2.19 adds exception: "(traceback unavailable)" to every failure: the module
    # gave none, and no module crashed (module_stderr)
    assert "Traceback" not in json.dumps(result) and "module_stderr" not in result, result
    return msg


def _ipvs_services(result: dict[str, Any]) -> list[dict[str, Any]]:
    services: list[dict[str, Any]] = json.loads(result["stdout"])["services"]
    return services


@pytest.mark.kernel
def test_check_mode_plans_and_writes_nothing(life: Life) -> None:
    check = life["check"]
    assert check["changed"] is True and not check.get("failed"), check
    assert "nftables: add 192.0.2.10 tcp:80 -> mark 80" in check["plan_lines"]
    assert any(line.startswith("ipvs: add fwmark 80 ipv6") for line in check["plan_lines"])
    assert check["diff"]["prepared"] == check["plan"] + "\n"
    assert check["summary"] == "9 to add, 0 to change, 0 to remove"  # 4 + 2 rules, 3 services
    assert check["changes"]["changes"] is True
    assert "lvsfw" not in life["ruleset after check"]["stdout"]
    assert "table inet foreign" in life["ruleset after check"]["stdout"]
    ipvs = json.loads(life["ipvs after check"]["stdout"])
    assert ipvs["services"] == [] and ipvs["log"] == []
    assert life["state after check"]["stat"]["exists"] is False


@pytest.mark.kernel
def test_apply_then_rerun_is_unchanged(life: Life) -> None:
    apply = life["apply"]
    assert apply["changed"] is True and not apply.get("failed"), apply
    assert apply["plan"] == life["check"]["plan"]
    assert apply["firewall"] == "nftables" and apply["bundles"] == ["web", "dns"]
    ruleset = life["ruleset after apply"]["stdout"]
    assert "table inet lvsfw" in ruleset and "192.0.2.10" in ruleset
    assert sorted(s["mark"] for s in _ipvs_services(life["ipvs after apply"])) == [53, 80, 80]
    rerun = life["re-run inline"]  # the inline tables are the TOML's bundles: nothing to do
    assert rerun["changed"] is False and rerun["plan"] == "no changes", rerun
    assert rerun["plan_lines"] == [] and "diff" not in rerun
    clean = life["check clean"]
    assert clean["changed"] is False and "diff" not in clean, clean


@pytest.mark.kernel
def test_broken_bundles_fail_with_one_line(life: Life) -> None:
    inline = _one_line_failure(life["broken inline"])
    assert inline.startswith("bundles[0] (web).ports: "), inline
    from_file = _one_line_failure(life["broken file"])
    assert from_file.startswith(f"{life.state_file.parent / 'broken.toml'}:5: bundle[0] (web).mark")


@pytest.mark.kernel
def test_node_without_keepalived_is_refused(life: Life) -> None:
    msg = _one_line_failure(life["node"])
    assert msg.startswith("node: 'lb1' is not valid; expected a node with ipvs"), msg


@pytest.mark.kernel
def test_without_lvsfw_on_the_director(life: Life) -> None:
    probe = [SYSTEM_PYTHON, "-c", "import lvsfw"]
    if not Path(SYSTEM_PYTHON).exists() or subprocess.run(probe, check=False).returncode == 0:
        pytest.skip(f"{SYSTEM_PYTHON} is missing or has lvsfw")
    msg = _one_line_failure(life["no lvsfw"])
    assert msg.startswith(f"lvsfw is not importable by {SYSTEM_PYTHON}: "), msg


@pytest.mark.kernel
def test_verify_ok_then_drift_then_repair(life: Life) -> None:
    verify = life["verify"]
    assert verify["changed"] is False and verify["ok"] is True and verify["drift"] == [], verify
    drift = life["verify drift"]
    msg = _one_line_failure(drift)
    assert msg.startswith(f"drift: {len(drift['drift'])} finding(s): "), msg
    assert drift["drift_lines"] and all(line in msg for line in drift["drift_lines"])
    assert {d["bundle"] for d in drift["drift"]} >= {"web", "dns"}
    repair = life["repair"]
    assert repair["changed"] is True and repair["drift"] == [] and not repair.get("failed"), repair


@pytest.mark.kernel
def test_absent_removes_everything_of_lvsfw(life: Life) -> None:
    check = life["absent check"]
    assert check["changed"] is True and any("remove" in line for line in check["plan_lines"])
    absent = life["absent"]
    assert absent["changed"] is True and absent["drift"] == [] and not absent.get("failed")
    assert absent["plan"] == check["plan"]
    ruleset = life["ruleset after absent"]["stdout"]
    assert "lvsfw" not in ruleset and "table inet foreign" in ruleset  # and nothing else
    assert _ipvs_services(life["ipvs after absent"]) == []
    assert life["absent again"]["changed"] is False
    assert life["verify nothing"]["ok"] is True


# -- the HA-pair example, two directors in two namespaces --------------------------------------


@pytest.mark.kernel
def test_ha_pair_example(tmp_path: Path) -> None:
    ensure_kernel()
    tool("ansible-playbook")
    names = [netns_add(), netns_add()]
    inventory = tmp_path / "inventory.ini"
    hosts = [
        f"{node} ansible_connection=local lvsfw_node={node} lvsfw_netns={ns} lvsfw_ipvs=false"
        f" lvsfw_state_file={tmp_path / node}.json"
        for node, ns in zip(("lb1", "lb2"), names)
    ]
    inventory.write_text("[directors]\n" + "\n".join(hosts) + "\n")
    try:
        first = run_playbook(tmp_path, EXAMPLE, "-i", str(inventory))
        again = run_playbook(tmp_path, EXAMPLE, "-i", str(inventory))
        rulesets = [in_netns(ns, "nft", "list", "ruleset") for ns in names]
    finally:
        for ns in names:
            run(["ip", "netns", "delete", ns], check=False)
            Path(f"/run/lvsfw-{ns}.lock").unlink(missing_ok=True)  # the example's default lock
    for node in ("lb1", "lb2"):
        assert first["stats"][node]["failures"] == 0, first["stats"]
        assert first["stats"][node]["changed"] >= 1, first["stats"]
        assert again["stats"][node]["changed"] == 0, again["stats"]
    assert rulesets[0] == rulesets[1] and "table inet lvsfw" in rulesets[0]


@pytest.mark.kernel
def test_keepalived_node_writes_its_whole_keepalived_conf(tmp_path: Path) -> None:
    """ipvs=keepalived with node: the task writes the node's config-tested keepalived.conf
    (keepalived not running: a warning, the task still succeeds); re-run: unchanged."""
    ensure_kernel()
    tool("ansible-playbook")
    ns = netns_add()
    try:
        in_netns(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        conf, toml = tmp_path / "keepalived.conf", tmp_path / "pair.toml"
        cluster = {"interface": "eth0", "virtual_router_id": 51, "node": [
            {"name": "lb1", "address": "192.168.50.1", "priority": 150},
            {"name": "lb2", "address": "192.168.50.2", "priority": 100}]}  # fmt: skip
        web = {"name": "web", "vips": ["192.0.2.10"], "ports": "tcp:80,443", "mark": 80,
               "real_servers": ["10.0.0.11"], "health": {"check": "tcp"}}  # fmt: skip
        toml.write_text(tomli_w.dumps({"cluster": cluster, "bundle": [web]}))
        task = {"name": "lb1", "lvsfw.lvs.bundles": {
            "config": str(toml), "ipvs": "keepalived", "node": "lb1", "netns": ns,
            "keepalived_conf": str(conf), "state_file": str(tmp_path / "state.json"),
            "lock_dir": str(tmp_path)}}  # fmt: skip
        play = [{"hosts": "localhost", "gather_facts": False, "tasks": [task]}]
        first = by_task(playbook(tmp_path, play))["lb1"]
        again = by_task(playbook(tmp_path, play))["lb1"]
    finally:
        run(["ip", "netns", "delete", ns], check=False)
    assert first["changed"] is True and not first.get("failed"), first
    assert any("keepalived is not running" in w for w in first.get("warnings", [])), first
    text = conf.read_text(encoding="utf-8")
    assert text.startswith("# keepalived.conf written by lvsfw") and "router_id lb1" in text
    assert again["changed"] is False, again


def test_missing_ansible_fails_under_require_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "BIN", Path("/nonexistent"))
    monkeypatch.setenv("LVSFW_REQUIRE_KERNEL", "1")
    with pytest.raises(pytest.fail.Exception, match="ansible-playbook is missing"):
        tool("ansible-playbook")
    monkeypatch.delenv("LVSFW_REQUIRE_KERNEL")
    with pytest.raises(pytest.skip.Exception, match="pip install ansible-core"):
        tool("ansible-playbook")
