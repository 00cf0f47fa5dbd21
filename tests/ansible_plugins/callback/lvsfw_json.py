"""A stdout callback printing a playbook's results as one JSON document, for tests.

ansible-core ships no JSON stdout callback (``json`` lives in the ansible.posix collection,
which is not on PyPI); this one prints the same shape as ansible.posix's: ``{"plays": [{"play":
{"name"}, "tasks": [{"task": {"name"}, "hosts": {HOST: RESULT}}]}], "stats": {HOST: {"ok",
"changed", "failures", ...}}}``. Enable it with ``ANSIBLE_CALLBACK_PLUGINS`` pointing at this
folder and ``ANSIBLE_STDOUT_CALLBACK=lvsfw_json``.
"""

from __future__ import annotations

import json
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: lvsfw_json
type: stdout
short_description: a playbook's results as one JSON document (lvsfw's tests)
description: Prints every task's result per host, and the stats, as JSON when the play ends.
"""


def _of(result: Any) -> tuple[str, dict[str, Any]]:
    """The host name and the result dict of a task result (ansible-core 2.19's ``host`` and
    ``result``, or the older ``_host`` and ``_result``)."""
    host = getattr(result, "host", None) or result._host
    data = getattr(result, "result", None)
    return host.get_name(), dict(result._result if data is None else data)


class CallbackModule(CallbackBase):  # type: ignore[misc]
    """Collects results by play and task; prints them at the end."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "lvsfw_json"

    def __init__(self) -> None:
        super().__init__()
        self.plays: list[dict[str, Any]] = []

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self.plays[-1]["tasks"].append({"task": {"name": task.get_name()}, "hosts": {}})

    v2_playbook_on_handler_task_start = v2_playbook_on_task_start

    def _record(self, result: Any, **flags: Any) -> None:
        host, data = _of(result)
        data.update(flags)
        self.plays[-1]["tasks"][-1]["hosts"][host] = data

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result, failed=True, ignored=ignore_errors)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        self._display.display(json.dumps({"plays": self.plays, "stats": summary}, default=str))
