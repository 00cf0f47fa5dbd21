"""What an iptables backend last read or wrote, so an apply need not parse it all again.

Two records per backend object (one process; nothing is written to disk), and the range
rules of the last specification (planned, checked and written from the same one):

* **chains**: :func:`~lvsfw.backends.iptsyntax.parse_state` of each family's ``iptables-save``
  text, keyed by that text without its comment lines and counters. The same text parses the
  same: this is exact, not trust.
* **sets**: each own set as lvsfw last read it in full or changed it by ``del``/``add`` lines.
  An apply's read (``observe(fast=True)``) then lists only each set's header (``ipset list
  -t``: type, options and number of entries, one process) and takes the recorded members when
  header and count are what lvsfw left: lvsfw trusts what it wrote, as with the nf_tables
  generation, but ipset has no generation to prove it. Any doubt reads in full: no record, a
  header or count that differs, a set lvsfw created, swapped, renamed or destroyed, a write
  that failed. ``verify``, ``plan`` and ``show`` never pass ``fast`` and always read in full,
  so drift inside a set (a member swapped for another, the count kept) shows there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Optional

from lvsfw.backends import ipset
from lvsfw.backends.iptsyntax import LiveState, parse_state
from lvsfw.enums import Family
from lvsfw.rules import Specification

#: Sends ``ipset restore`` input (argv, stdin) and returns its output.
Run = Callable[[list[str], Optional[str]], str]
#: :func:`lvsfw.backends.iptsyntax.rule_lines`.
RangeLines = Callable[..., list[str]]
#: A set's header words (type first) and its number of entries.
Header = tuple[tuple[str, ...], int]
_COUNTERS = re.compile(r"^(:\S+ \S+) \[\d+:\d+\]$", re.MULTILINE)
_COMMENTS = re.compile(r"^#.*\n?", re.MULTILINE)


def stable_text(text: str) -> str:
    """``iptables-save`` text without what changes while the rules do not: comment lines
    (a timestamp) and built-in chains' packet counters."""
    return _COUNTERS.sub(r"\1", _COMMENTS.sub("", text))


def headers(text: str) -> dict[str, Header]:
    """Each set's (header words, number of entries) in ``ipset list -t`` output."""
    found: dict[str, Header] = {}
    name, kind, words = "", "", ""
    for line in text.splitlines():
        field, _, value = line.partition(": ")
        if field == "Name":
            name = value
        elif field == "Type":
            kind = value
        elif field == "Header":
            words = value
        elif field == "Number of entries" and value.isdigit():
            found[name] = ((kind, *words.split()), int(value))
    return found


class Record:
    """The chain parses and the trusted set states of one iptables backend object."""

    def __init__(self) -> None:
        self._texts: dict[tuple[Family, bool], tuple[str, LiveState]] = {}
        self._sets: dict[str, ipset.SetState] = {}
        self._spec: Optional[Specification] = None
        self._ranges: dict[Family, list[str]] = {}

    def ranges(self, spec: Specification, family: Family, lines: RangeLines) -> list[str]:
        """``lines(spec, family, ranges_only=True)``, computed once per specification (an
        apply plans, checks and writes the same one)."""
        if self._spec is not spec:
            self._spec, self._ranges = spec, {}
        found = self._ranges.get(family)
        if found is None:
            found = self._ranges[family] = lines(spec, family, ranges_only=True)
        return list(found)

    def state(self, family: Family, text: str, strict: bool) -> LiveState:
        """``parse_state(text, strict)``, parsed again only when the stable text changed."""
        key = stable_text(text)
        found = self._texts.get((family, strict))
        if found is not None and found[0] == key:
            return found[1]
        state = parse_state(text, strict=strict)
        self._texts[(family, strict)] = (key, state)
        return state

    def sets(self, present: Collection[str], fast: bool, run: Run) -> dict[str, ipset.SetState]:
        """The sets named ``present`` (all exist): the recorded ones when ``fast`` and every
        header and count is as recorded, else listed and parsed in full (and recorded)."""
        if not present:
            return {}
        if fast and all(n in self._sets for n in present):
            terse = run(["ipset", "restore"], "".join(f"list {n} -t\n" for n in present))
            live = headers(terse)
            if all(self._matches(n, live.get(n)) for n in present):
                return {n: self._sets[n] for n in present}
        text = run(["ipset", "restore"], "".join(f"list {n} -o save\n" for n in present))
        sets = ipset.parse_sets(text.splitlines(), present, strict=False)
        self._sets = {n: s for n, s in sets.items() if not s.unknown}
        return sets

    def _matches(self, name: str, live: Optional[Header]) -> bool:
        """Whether set ``name``'s listed header and count are as recorded (a set lvsfw just
        created is recorded without its header: the kernel adds options, such as a random
        ``initval``; the first listing supplies it)."""
        state = self._sets[name]
        if live is None or live[1] != len(state.members):
            return False
        if not state.header:
            if live[0][:1] != (ipset.SET_TYPE,):
                return False
            state = self._sets[name] = ipset.SetState(name, live[0], state.members)
        return live[0] == state.header

    def forget(self) -> None:
        """Trust no set (before a write: a failure leaves them unknown)."""
        self._sets = {}

    def wrote(
        self,
        spec: Specification,
        sets: dict[str, ipset.SetState],
        names: dict[Family, str],
        lines: list[str],
    ) -> None:
        """After a write loading ``spec`` (planned on ``sets`` as read) succeeded with the
        ``ipset restore`` ``lines``: each family's set holds exactly ``spec``'s members (its
        header as read when changed by ``add``/``del`` lines only or not at all, unknown when
        loaded whole and swapped or renamed in); a set destroyed is forgotten."""
        verbs: dict[str, set[str]] = {}
        for line in lines:
            verb, _, rest = line.partition(" ")
            verbs.setdefault(rest.partition(" ")[0], set()).add(verb)
        record: dict[str, ipset.SetState] = {}
        for family, name in names.items():
            before = sets.get(name)
            used = verbs.get(name, set()) | verbs.get(name + ipset.TEMP_SUFFIX, set())
            members = ipset.wanted_members(spec, family)
            if not members:
                continue
            if used <= {"add", "del"} and before is not None and not before.unknown:
                record[name] = ipset.SetState(name, before.header, dict(members))
            elif used & {"swap", "rename"}:
                record[name] = ipset.SetState(name, (), dict(members))
        self._sets = record
