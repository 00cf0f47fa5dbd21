"""keepalived checker blocks as lvsfw health checks, or a warning naming what cannot be held.

``TCP_CHECK``, ``HTTP_GET``, ``SSL_GET`` and ``MISC_CHECK`` become a
:class:`lvsfw.health.HealthCheck` (read by :func:`lvsfw.backends.kachecks.parse_check`, the
reader of lvsfw's own render); every keyword inside them lvsfw does not hold is a warning with
its line, and a checker whose values lvsfw refuses is left out with a warning. Other checkers
(``SMTP_CHECK``, ``DNS_CHECK``, ``UDP_CHECK``, ``PING_CHECK``, ...) are warnings.
"""

from __future__ import annotations

from typing import Optional

import attrs

from lvsfw.backends.kachecks import parse_check
from lvsfw.errors import LvsfwError
from lvsfw.health import HealthCheck
from lvsfw.importers import tree
from lvsfw.importers.source import not_imported

HELD = {"TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK"}
_COMMON = {"connect_port", "connect_timeout", "retry", "nb_get_retry", "delay_before_retry"}
_KEYWORDS = {
    "TCP_CHECK": _COMMON,
    "HTTP_GET": _COMMON | {"url"},
    "SSL_GET": _COMMON | {"url"},
    "MISC_CHECK": {"misc_path", "misc_timeout", "misc_dynamic", "retry", "delay_before_retry"},
}
_URL = {"path", "digest", "status_code"}


def checker(node: tree.Node, port: Optional[int], warn: list[str]) -> Optional[HealthCheck]:
    """The health check of checker block ``node`` of a real server listening on ``port``
    (None: a fwmark service's real server), or None (with a warning) when lvsfw cannot hold
    it."""
    urls = 0
    for child in node.children or ():
        keyword = child.keyword
        if keyword not in _KEYWORDS[node.keyword]:
            warn.append(
                not_imported(child.where, keyword, f"lvsfw's {node.keyword} has no such setting")
            )
        elif keyword == "url":
            urls += 1
            if urls > 1:
                warn.append(not_imported(child.where, "url", "lvsfw checks one URL (the first)"))
            for item in child.children or ():
                if item.keyword not in _URL:
                    warn.append(
                        not_imported(item.where, item.keyword, "lvsfw's url has no such setting")
                    )
    try:
        check = parse_check(node)
    except (LvsfwError, ValueError) as exc:
        warn.append(not_imported(node.where, node.keyword, f"lvsfw refuses its values ({exc})"))
        return None
    if check.connects and check.port is None:
        if port is None:
            warn.append(
                not_imported(
                    node.where, "connect_port", "missing: lvsfw checks the bundle's first TCP port"
                )
            )
        else:
            check = attrs.evolve(check, port=port)
    return check
