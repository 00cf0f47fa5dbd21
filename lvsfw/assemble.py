"""The Director a configuration's ``[director]`` settings name, as the ``lvsfw`` command and
the Ansible modules build it (one place, so the two cannot choose differently).

The packet filter: the one the settings name, else the one the state file records, else
nftables (for ``owned`` work — show, destroy — the recorded one first unless ``firewall`` was
given explicitly). The service half: ipvsadm (the default), none, or keepalived from lvsfw's
keepalived.conf (with a ``[cluster]``, the file of this director's ``node``). nftables keeps
what it committed beside the state file (``STATE.nft``) for the next process's apply.
"""

from __future__ import annotations

from typing import Optional, Union

from lvsfw import state
from lvsfw.backends.base import ServiceHalf
from lvsfw.backends.karun import DEFAULT_CONF, KeepalivedRuntime
from lvsfw.backends.nftables import Nftables
from lvsfw.cluster import Cluster
from lvsfw.config import IPVS_MODES, DirectorSettings
from lvsfw.director import Director
from lvsfw.errors import ValidationError
from lvsfw.lock import LOCK_DIR

#: The packet filter when neither the settings nor the state file name one.
DEFAULT_FIREWALL = "nftables"
DEFAULT_LOCK_TIMEOUT = 60.0


def service_half(
    settings: DirectorSettings, cluster: Optional[Cluster], ipvsadm: str = "ipvsadm"
) -> Union[bool, str, ServiceHalf]:
    """What ``Director(ipvs=...)`` gets for ``settings`` (True: ipvsadm)."""
    mode = settings.ipvs
    if mode is not None and not isinstance(mode, bool) and mode not in IPVS_MODES:
        raise ValidationError("ipvs", mode, f"true, false or one of {', '.join(IPVS_MODES)}")
    if mode != "keepalived":
        if settings.node is not None:
            raise ValidationError("node", settings.node, 'a node with ipvs = "keepalived" only')
        return True if mode is None else mode
    if cluster is not None and settings.node is None:
        names = ", ".join(n.name for n in cluster.nodes)
        raise ValidationError("node", None, f"this director's node of [cluster] ({names})")
    return KeepalivedRuntime(settings.netns, cluster=cluster, node=settings.node,
                             conf=settings.keepalived_conf or DEFAULT_CONF,
                             ipvsadm=ipvsadm)  # fmt: skip


def state_file(settings: DirectorSettings) -> str:
    """The state file the Director for ``settings`` uses (named, else its namespace's)."""
    return settings.state_file or state.state_path(settings.netns)


def build(
    settings: DirectorSettings,
    cluster: Optional[Cluster] = None,
    *,
    owned: bool = False,
    firewall_given: bool = False,
    lock_dir: Optional[str] = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ipvsadm: Optional[str] = None,
) -> Director:
    """The Director for ``settings`` (see the module's docstring); ``firewall_given``: the
    packet filter was named by the caller (a flag), not only by a config file."""
    recorded = state.load(state_file(settings)).firewall
    if owned and not firewall_given and recorded is not None:
        firewall = recorded
    else:
        firewall = settings.firewall or recorded or DEFAULT_FIREWALL
    director = Director(
        firewall,
        service_half(settings, cluster, ipvsadm or "ipvsadm"),
        settings.netns,
        state_file=settings.state_file,
        lock_timeout=lock_timeout,
        lock_dir=lock_dir or LOCK_DIR,
        ipvsadm=ipvsadm or "ipvsadm",
    )
    if isinstance(director.firewall, Nftables) and director.firewall.cache_path is None:
        # a fresh process each time: what the last one committed is kept beside the state
        # file, trusted only while the namespace's nf_tables generation is unchanged
        director.firewall.cache_path = director.state_file + ".nft"
    return director
