"""lvsfw.lvs.bundles: keep a director's mark rules and IPVS fwmark services equal to bundles."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lvsfw.lvs.plugins.module_utils import common

DOCUMENTATION = r"""
---
module: bundles
short_description: Keep an LVS director's firewall marks and IPVS services equal to bundles
version_added: "0.1.0"
description:
  - Runs lvsfw on the director (the managed host) to make its firewall-mark rules (nftables, or
    iptables + ipset) and its IPVS fwmark services (through C(ipvsadm)) equal to a list of
    bundles, each VIP:port set with its mark, scheduler and real servers.
  - The bundles come from a lvsfw TOML file on the director (O(config)) or from the task itself
    (O(bundles)), the same tables as the file's C([[bundle]]) entries, validated by lvsfw's
    config loader exactly as a file is, with the same one-line error messages.
  - Check mode is C(lvsfw plan) (nothing is written). Diff mode shows the plan text.
    V(changed) is true exactly when the plan was not empty, so a second run reports
    V(changed=false).
  - Every lvsfw error fails the task with lvsfw's one-line message, never a traceback.
  - Only what lvsfw owns is ever changed or removed (its table, chains and sets, and the IPVS
    services its state file records); foreign rules and services are left alone.
author:
  - lvsfw developers
requirements:
  - lvsfw installed for the python that runs the module on the director
    (set C(ansible_python_interpreter) to lvsfw's virtualenv python)
  - nftables, or iptables and ipset; ipvsadm unless O(ipvs=false)
  - root on the director
attributes:
  check_mode:
    support: full
    description: Reports the plan without writing anything.
  diff_mode:
    support: full
    description: The plan text, as C(lvsfw plan) prints it, in C(diff.prepared).
options:
  config:
    description:
      - Path (on the director) of a lvsfw TOML configuration, C([[bundle]]) tables and an
        optional C([director]) table; the task's own options override the C([director]) table.
      - Mutually exclusive with O(bundles). One of them is required with O(state=present).
    type: path
  bundles:
    description:
      - The bundles, as a list of the tables a TOML file's C([[bundle]]) entries hold (keys
        C(name), C(vips), C(ports), C(mark), C(scheduler), C(persistence),
        C(persistence_netmask), C(persistence_prefix), C(real_servers)).
      - A real server is an address or a mapping (C(address), C(weight), C(forwarding),
        C(upper_threshold), C(lower_threshold)).
      - A key set to null is left out, as a TOML table leaves it out.
      - An empty list is valid, lvsfw then owns nothing (its rules and services are removed).
    type: list
    elements: dict
  state:
    description:
      - V(present) applies the bundles. V(absent) removes every mark rule and IPVS service
        lvsfw owns on the director (O(config) and O(bundles) are not needed; a O(config) file
        still gives its C([director]) settings), and nothing else.
    type: str
    choices: [present, absent]
    default: present
  firewall:
    description:
      - The packet filter, V(nftables), V(iptables-nft), V(iptables-legacy) or V(auto) (the one
        the director already uses for mangle).
      - Default, as for the C(lvsfw) command, the config's C([director]) setting, else the one
        lvsfw's state file records, else V(nftables). With O(state=absent) the recorded one
        comes first.
    type: str
  ipvs:
    description:
      - Who runs IPVS. V(true) or V(ipvsadm) (lvsfw, through C(ipvsadm)); V(keepalived)
        (keepalived builds IPVS from the keepalived.conf lvsfw writes, config-tests and
        reloads it); V(false) or V(none) (the marks only).
      - Default the config's C([director]) setting, else V(true).
    type: raw
  netns:
    description:
      - The network namespace (a name under C(/run/netns)) to work in; default the current one.
    type: str
  node:
    description:
      - With O(ipvs=keepalived) and a C([cluster]) table in O(config), this director's node
        (its whole keepalived.conf, VRRP included, is written). Refused with any other O(ipvs).
    type: str
  keepalived_conf:
    description:
      - With O(ipvs=keepalived), the file lvsfw writes (never one it did not write); default
        C(/etc/keepalived/keepalived.conf).
    type: path
  verify:
    description:
      - After applying (or removing), read the kernel back with C(lvsfw verify) and fail the
        task on any drift (the drift lines in C(msg)). Skipped in check mode, where nothing was
        applied.
    type: bool
    default: false
  state_file:
    description:
      - Where lvsfw records what it owns; default C(/var/lib/lvsfw/state.json) (one file per
        namespace).
    type: path
  lock_dir:
    description:
      - For testing. The directory of lvsfw's per-namespace lock file; default C(/run).
    type: path
  lock_timeout:
    description:
      - Seconds to wait for another lvsfw run holding the namespace's lock (0 fails at once).
    type: float
    default: 60
  ipvsadm:
    description:
      - For testing. The ipvsadm program to run (a test double on hosts without IPVS); default
        C(ipvsadm) on the PATH.
    type: path
notes:
  - The module runs on the director and imports lvsfw there; it is not a connection or action
    plugin. C(lvsfw.lvs.verify) is the read-only post-task.
seealso:
  - module: lvsfw.lvs.verify
"""

EXAMPLES = r"""
- name: Apply the director's lvsfw config file
  lvsfw.lvs.bundles:
    config: /etc/lvsfw/lvsfw.toml

- name: Bundles from the inventory, marks through iptables-nft, checked after the apply
  lvsfw.lvs.bundles:
    firewall: iptables-nft
    verify: true
    bundles:
      - name: web
        vips: [192.0.2.10, "2001:db8::10"]
        ports: "tcp:80,443"
        mark: 80
        scheduler: wlc
        persistence: 300
        real_servers:
          - 10.0.0.11
          - {address: 10.0.0.12, weight: 2, forwarding: masq}

- name: What would change (prints the plan with --check --diff)
  lvsfw.lvs.bundles:
    config: /etc/lvsfw/lvsfw.toml
  check_mode: true
  diff: true

- name: Remove everything lvsfw owns on this director
  lvsfw.lvs.bundles:
    state: absent
"""

RETURN = r"""
plan:
  description: The plan as C(lvsfw plan) prints it (C(no changes) when empty); in check mode
    what would be done, else what was done.
  returned: always
  type: str
  sample: "nftables: add 192.0.2.10 tcp:80 -> mark 80"
plan_lines:
  description: O(plan), a list item per line (empty when there was nothing to do).
  returned: always
  type: list
  elements: str
changes:
  description: The plan as C(lvsfw plan --json) prints it (rules and services to add, change,
    remove).
  returned: always
  type: dict
summary:
  description: How many rules and services were (or would be) added, changed and removed.
  returned: always
  type: str
  sample: 4 to add, 0 to change, 0 to remove
firewall:
  description: The packet filter used.
  returned: always
  type: str
  sample: nftables
state_file:
  description: The state file lvsfw records its ownership in.
  returned: always
  type: str
bundles:
  description: The names of the bundles applied (empty for O(state=absent)).
  returned: always
  type: list
  elements: str
drift:
  description: With O(verify=true), the drift findings (C(kind), C(bundle), C(detail)); empty
    when clean.
  returned: when verify is true and not in check mode
  type: list
  elements: dict
"""


def _argument_spec() -> dict[str, Any]:
    spec = dict(common.COMMON_OPTIONS)
    spec["state"] = {"type": "str", "choices": ["present", "absent"], "default": "present"}
    spec["verify"] = {"type": "bool", "default": False}
    return spec


def run(module: AnsibleModule) -> dict[str, Any]:
    """Plan (check mode) or apply/destroy; the task's result."""
    params = module.params
    present = params["state"] == "present"
    bundles, settings, cluster = common.load(params)
    director = common.director(params, settings, cluster, owned=not present)
    wanted = list(bundles or ()) if present else []
    if module.check_mode:
        plan = director.plan(wanted)
    elif present:
        plan = director.apply(wanted)
    else:
        plan = director.destroy()
    for note in director.services.notes:  # keepalived not running: the file waits for it
        module.warn(note)
    result = common.plan_result(plan)
    result.update(
        {
            "firewall": director.firewall.name,
            "state_file": director.state_file,
            "bundles": [b.name for b in wanted],
        }
    )
    if module._diff and plan:
        result["diff"] = {"prepared": result["plan"] + "\n"}
    if params["verify"] and not module.check_mode:
        report = director.verify(wanted)
        result["drift"] = common.drift_json(report)
        if not report.ok:
            module.fail_json(msg=common.drift_message(report), **result)
    return result


def main() -> None:
    """The module's entry point."""
    common.run_module(
        run,
        argument_spec=_argument_spec(),
        required_if=[("state", "present", ("config", "bundles"), True)],
    )


if __name__ == "__main__":
    main()
