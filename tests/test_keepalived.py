"""The keepalived backend: virtual_server fwmark blocks, rendered and parsed back."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given

from lvsfw import registry
from lvsfw.backends.base import ServiceHalf
from lvsfw.backends.ipvs import canonical
from lvsfw.backends.keepalived import Keepalived, parse_blocks
from lvsfw.enums import Family, Forwarding, Scheduler
from lvsfw.errors import ParseError
from lvsfw.model import Bundle
from lvsfw.rules import FwmarkService, specify
from tests import strategies
from tests.contract import ServiceBackendContract

SEED = Bundle(
    "web",
    "192.0.2.10",
    "tcp:80,443",
    80,
    scheduler="wlc",
    persistence=300,
    real_servers=["10.0.0.11", {"address": "10.0.0.12", "weight": 2}],
)
SEED_TEXT = """\
virtual_server fwmark 80 {
    lb_algo wlc
    lb_kind DR
    persistence_timeout 300
    real_server 10.0.0.11 0 {
        weight 1
    }
    real_server 10.0.0.12 0 {
        weight 2
    }
}
"""


def spec_of(*bundles: Bundle) -> frozenset[FwmarkService]:
    return frozenset(canonical(s) for s in specify(bundles).services)


def test_registry_knows_keepalived() -> None:
    """The registered keepalived backend renders as Keepalived does and runs the IPVS half."""
    found = registry.get("keepalived")
    assert issubclass(found, Keepalived) and issubclass(found, ServiceHalf)
    assert registry.service_half("keepalived").render([SEED]) == Keepalived().render([SEED])


def test_seed_exact_text() -> None:
    assert Keepalived().render([SEED]) == SEED_TEXT
    assert Keepalived().parse(SEED_TEXT) == specify([SEED]).services


def test_dual_stack_two_blocks_v6_says_ip_family() -> None:
    bundle = Bundle(
        "ds",
        ["192.0.2.10", "2001:db8::10"],
        "tcp:80",
        80,
        persistence=60,
        persistence_netmask=24,
        persistence_prefix=64,
        real_servers=["10.0.0.11", {"address": "2001:db8::11", "forwarding": "masq"}],
    )
    text = Keepalived(delay_loop=6).render([bundle])
    assert text == (
        "virtual_server fwmark 80 {\n"
        "    delay_loop 6\n"
        "    lb_algo wlc\n"
        "    lb_kind DR\n"
        "    persistence_timeout 60\n"
        "    persistence_granularity 255.255.255.0\n"
        "    real_server 10.0.0.11 0 {\n"
        "        weight 1\n"
        "    }\n"
        "}\n"
        "\n"
        "virtual_server fwmark 80 {\n"
        "    ip_family inet6\n"
        "    delay_loop 6\n"
        "    lb_algo wlc\n"
        "    lb_kind NAT\n"
        "    persistence_timeout 60\n"
        "    persistence_granularity 64\n"
        "    real_server 2001:db8::11 0 {\n"
        "        weight 1\n"
        "    }\n"
        "}\n"
    )
    assert Keepalived().parse(text) == spec_of(bundle)


def test_mixed_forwarding_uses_per_server_lvs_method() -> None:
    bundle = Bundle(
        "mix",
        "192.0.2.1",
        "tcp:80",
        5,
        real_servers=[
            {"address": "10.0.0.1", "forwarding": "tunnel"},
            {"address": "10.0.0.2", "forwarding": "tunnel", "upper_threshold": 50},
            {
                "address": "10.0.0.3",
                "forwarding": "masq",
                "upper_threshold": 8,
                "lower_threshold": 4,
            },
        ],
    )
    text = Keepalived().render([bundle])
    assert "    lb_kind TUN\n" in text
    assert text.count("lvs_method") == 1
    assert "        lvs_method NAT\n        uthreshold 8\n        lthreshold 4\n" in text
    assert "        uthreshold 50\n" in text
    assert Keepalived().parse(text) == spec_of(bundle)


@pytest.mark.parametrize("scheduler", list(Scheduler))
def test_every_scheduler(scheduler: Scheduler) -> None:
    bundle = Bundle("s", "192.0.2.1", "udp:53", 7, scheduler=scheduler)
    text = Keepalived().render([bundle])
    assert f"    lb_algo {scheduler.value}\n" in text
    assert Keepalived().parse(text) == spec_of(bundle)


class TestKeepalivedContract(ServiceBackendContract):
    backend_name = "keepalived"


@given(strategies.junk_text)
def test_junk_raises_only_parse_error(text: str) -> None:
    with contextlib.suppress(ParseError):
        parse_blocks(text)


HAND_WRITTEN = """\
! a keepalived.conf as people write it
global_defs {
    router_id LVS_1
}
vrrp_instance VI_1 {
    virtual_ipaddress {
        192.0.2.10
    }
}
virtual_server 192.0.2.10 80 {   # not a fwmark service: skipped
    lb_algo rr
}
virtual_server fwmark 21 {
    delay_loop 10
    lvs_sched sh
    lvs_method NAT
    persistence_timeout
    protocol TCP
    real_server 10.0.0.1 {
        weight 3
        TCP_CHECK {
            connect_timeout 3
        }
    }
    real_server 10.0.0.2 0 {
        lb_kind DR
    }
    real_server 10.0.0.3 0 {
        lvs_method TUN type ipip
    }
}
virtual_server fwmark 21 {
    real_server 2001:db8::1 0 {
    }
}
"""


def test_parse_hand_written_config() -> None:
    services = {(s.family, s.mark): s for s in parse_blocks(HAND_WRITTEN)}
    assert set(services) == {(Family.IPV4, 21), (Family.IPV6, 21)}
    ftp = services[(Family.IPV4, 21)].service
    assert ftp.scheduler == Scheduler.SH
    assert ftp.persistence == 360  # keepalived's default persistence_timeout
    assert [(s.weight, s.forwarding) for s in ftp.real_servers] == [
        (3, Forwarding.MASQ),  # keepalived's default lb_kind is NAT
        (1, Forwarding.ROUTE),
        (1, Forwarding.TUNNEL),
    ]
    v6 = services[(Family.IPV6, 21)].service
    assert (v6.scheduler, v6.real_servers[0].forwarding) == (Scheduler.WLC, Forwarding.MASQ)


@pytest.mark.parametrize(
    "text",
    [
        "virtual_server fwmark 80 {\n",
        "}\n",
        "virtual_server fwmark x {\n}\n",
        "virtual_server fwmark 0 {\n}\n",
        "virtual_server fwmark 80 {\n lb_algo nosuch\n}\n",
        "virtual_server fwmark 80 {\n lb_kind FOO\n}\n",
        "virtual_server fwmark 80 {\n lvs_method TUN type gue port 6080\n}\n",
        "virtual_server fwmark 80 {\n ip_family inet5\n}\n",
        "virtual_server fwmark 80 {\n persistence_timeout 30\n"
        " persistence_granularity 255.0.255.0\n}\n",
        "virtual_server fwmark 80 {\n real_server 10.0.0.1 80 {\n }\n}\n",
        "virtual_server fwmark 80 {\n real_server nonsense 0 {\n }\n}\n",
        "virtual_server fwmark 80 {\n real_server 10.0.0.1 0 {\n weight -1\n }\n}\n",
        "virtual_server fwmark 80 {\n real_server 10.0.0.1 0 {\n weight x\n }\n}\n",
        "virtual_server fwmark 80 {\n}\nvirtual_server fwmark 80 {\n}\n",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_blocks(text)
