"""lvsfw.lvs.verify: fail when a director's live marks or IPVS services drifted from bundles."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.lvsfw.lvs.plugins.module_utils import common

DOCUMENTATION = r"""
---
module: verify
short_description: Fail when an LVS director's marks or IPVS services drifted from bundles
version_added: "0.1.0"
description:
  - Runs C(lvsfw verify) on the director, which reads the live kernel back in full (the packet
    filter's mark rules and lvsfw's IPVS fwmark services) and compares it with the bundles.
  - Fails the task on any drift, the drift lines in C(msg) (one line, findings separated by
    C(; )) and as data in C(drift); succeeds with V(changed=false) when the director matches.
  - Never writes anything, so it runs the same in check mode. Meant as a post-task after
    M(lvsfw.lvs.bundles), or on its own from a monitoring playbook.
author:
  - lvsfw developers
requirements:
  - lvsfw installed for the python that runs the module on the director
  - root on the director
attributes:
  check_mode:
    support: full
    description: Read only; runs in check mode as it does otherwise.
  diff_mode:
    support: none
options:
  config:
    description:
      - Path (on the director) of a lvsfw TOML configuration (its C([director]) table applies
        unless the task overrides it). Mutually exclusive with O(bundles); one is required.
    type: path
  bundles:
    description:
      - The bundles, the same tables as a TOML file's C([[bundle]]) entries (see
        M(lvsfw.lvs.bundles)). An empty list verifies that lvsfw holds nothing.
    type: list
    elements: dict
  firewall:
    description:
      - The packet filter (V(nftables), V(iptables-nft), V(iptables-legacy), V(auto)); default
        the config's setting, else the one lvsfw's state file records, else V(nftables).
    type: str
  ipvs:
    description:
      - Who runs IPVS, as the config's C([director]) C(ipvs) says it; V(true) or V(ipvsadm)
        (lvsfw, the default), V(keepalived) (keepalived from lvsfw's keepalived.conf, where real
        servers a health check took out are reported in RV(down), not as drift), V(false) or
        V(none) (marks only).
    type: raw
  netns:
    description: The network namespace to read; default the current one.
    type: str
  node:
    description:
      - With O(ipvs=keepalived) and a C([cluster]) table, this director's node.
    type: str
  keepalived_conf:
    description:
      - With O(ipvs=keepalived), lvsfw's keepalived.conf; default
        C(/etc/keepalived/keepalived.conf).
    type: path
  state_file:
    description: lvsfw's state file; default C(/var/lib/lvsfw/state.json) (one per namespace).
    type: path
  lock_dir:
    description: For testing. The directory of lvsfw's lock file (verify takes no lock).
    type: path
  lock_timeout:
    description: Accepted for symmetry with M(lvsfw.lvs.bundles); verify takes no lock.
    type: float
    default: 60
  ipvsadm:
    description: For testing. The ipvsadm program to run; default C(ipvsadm) on the PATH.
    type: path
seealso:
  - module: lvsfw.lvs.bundles
"""

EXAMPLES = r"""
- name: Apply, then prove the kernel holds it
  block:
    - name: Apply the bundles
      lvsfw.lvs.bundles:
        config: /etc/lvsfw/lvsfw.toml
    - name: Verify
      lvsfw.lvs.verify:
        config: /etc/lvsfw/lvsfw.toml

- name: Nothing of lvsfw left after a removal
  lvsfw.lvs.verify:
    bundles: []
"""

RETURN = r"""
ok:
  description: True when nothing drifted.
  returned: always
  type: bool
drift:
  description: Each finding (C(kind), C(bundle), C(detail)), as C(lvsfw verify --json) lists them.
  returned: always
  type: list
  elements: dict
  sample:
    - kind: missing
      bundle: web
      detail: 192.0.2.10 tcp:443 is not marked (want mark 80)
drift_lines:
  description: Each finding as C(lvsfw verify) prints it.
  returned: always
  type: list
  elements: str
firewall:
  description: The packet filter read.
  returned: always
  type: str
down:
  description: With O(ipvs=keepalived), the configured real servers a health check took out
    of IPVS (not drift).
  returned: always
  type: list
  elements: dict
  sample:
    - bundle: web
      family: ipv4
      mark: 80
      address: 10.0.0.11
"""


def run(module: AnsibleModule) -> dict[str, Any]:
    """Verify; the task's result (failed when there is drift)."""
    bundles, settings, cluster = common.load(module.params)
    director = common.director(module.params, settings, cluster)
    report = director.verify(list(bundles or ()))
    result: dict[str, Any] = {
        "changed": False,
        "ok": report.ok,
        "drift": common.drift_json(report),
        "drift_lines": [str(d) for d in report.drift],
        "firewall": director.firewall.name,
        "down": [{"bundle": d.bundle, "family": str(d.family), "mark": d.mark,
                  "address": str(d.address)} for d in report.down],
    }
    if not report.ok:
        module.fail_json(msg=common.drift_message(report), **result)
    return result


def main() -> None:
    """The module's entry point."""
    common.run_module(
        run,
        argument_spec=dict(common.COMMON_OPTIONS),
        required_one_of=[("config", "bundles")],
    )


if __name__ == "__main__":
    main()
