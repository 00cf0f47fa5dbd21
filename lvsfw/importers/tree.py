"""The one brace-tree reader behind the keepalived.conf and lvs.cf importers.

Both formats are lines of words grouped by ``{ ... }`` blocks; they differ only in their
tokens (:class:`Dialect`): keepalived ends a line at ``#`` or ``!`` and has ``include``;
lvs.cf has ``name = value`` settings, ``"quoted strings"`` and ``#`` comments outside quotes.
A ``{`` on the line after its head (``server web1`` then ``{``) opens that head's block.

The reader is one pass over a token stream with an explicit stack (no recursion however deep
the nesting, every step O(1)); ``include`` lines are spliced into that stream where they stand
(at top level or inside a block), read by the ``include`` callback the caller gives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Callable, Optional

import attrs

from lvsfw.errors import ParseError
from lvsfw.textscan import lvs_tokens, strip_hash_comment

#: (token, source, line): a word, ``{``, ``}`` or ``"\n"`` (a line end).
Token = tuple[str, str, int]
#: Reads the files an ``include PATTERN`` line names: (pattern, source, line) -> tokens.
Includer = Callable[[str, str, int], Iterable[Token]]

_KEEPALIVED_TOKEN = re.compile(r"[{}]|[^\s{}]+")
_KEEPALIVED_COMMENT = re.compile(r"[#!]")


@attrs.frozen
class Node:
    """One statement: its words, its block (None: a plain line) and where it starts."""

    words: tuple[str, ...]
    children: Optional[tuple[Node, ...]]
    line: int
    source: str = ""

    @property
    def where(self) -> str:
        """``SOURCE:LINE``."""
        return f"{self.source}:{self.line}"

    @property
    def keyword(self) -> str:
        """The first word ("" for a bare block)."""
        return self.words[0] if self.words else ""

    def value(self) -> str:
        """An lvs.cf setting's value (after ``=``, quotes removed), or the words after the
        keyword joined by blanks."""
        words = self.words[2:] if self.words[1:2] == ("=",) else self.words[1:]
        return " ".join(w[1:-1] if w.startswith('"') and len(w) > 1 else w for w in words)


@attrs.frozen
class Dialect:
    """How one format splits a line into tokens."""

    name: str
    split: Callable[[str], list[str]]
    #: a line ending in ``=`` continues on the next line (lvs.cf)
    continues: bool = False
    #: ``include PATTERN`` lines are spliced in (keepalived)
    includes: bool = False


def _keepalived_split(raw: str) -> list[str]:
    return _KEEPALIVED_TOKEN.findall(_KEEPALIVED_COMMENT.split(raw, maxsplit=1)[0])


KEEPALIVED = Dialect("keepalived", _keepalived_split, includes=True)
LVS_CF = Dialect("lvs.cf", lambda raw: lvs_tokens(strip_hash_comment(raw)), continues=True)


def tokens(
    text: str, source: str, dialect: Dialect, include: Optional[Includer] = None
) -> Iterator[Token]:
    """The tokens of ``text``, a line end after each line; with ``include``, an
    ``include PATTERN`` line is replaced by the tokens ``include`` returns."""
    for number, raw in enumerate(text.splitlines(), 1):
        words = dialect.split(raw)
        if include is not None and dialect.includes and len(words) == 2 and words[0] == "include":
            yield from include(words[1], source, number)
            continue
        for word in words:
            yield word, source, number
        yield "\n", source, number


def _joined(stream: Iterable[Token]) -> Iterator[Token]:
    """``stream`` with each run of line ends before a ``{`` dropped (the block belongs to the
    line before) and every other run of line ends as one."""
    pending: Optional[Token] = None
    for token in stream:
        if token[0] == "\n":
            pending = pending or token
            continue
        if pending is not None and token[0] != "{":
            yield pending
        pending = None
        yield token
    if pending is not None:
        yield pending


def read(
    text: str, source: str, dialect: Dialect, include: Optional[Includer] = None
) -> tuple[Node, ...]:
    """The statement tree of ``text``; :class:`ParseError` names the line of an unbalanced
    brace."""
    return build(tokens(text, source, dialect, include), dialect)


def build(stream: Iterable[Token], dialect: Dialect) -> tuple[Node, ...]:
    """The statement tree of a token stream (see :func:`tokens`)."""
    stack: list[list[Node]] = [[]]
    heads: list[tuple[tuple[str, ...], str, int]] = []
    words: list[str] = []
    start: tuple[str, int] = ("", 0)
    for piece, source, number in _joined(stream):
        if piece == "{":
            heads.append((tuple(words), *(start if words else (source, number))))
            stack.append([])
            words = []
        elif piece in {"}", "\n"}:
            if words and not (piece == "\n" and dialect.continues and words[-1] == "="):
                stack[-1].append(Node(tuple(words), None, start[1], start[0]))
                words = []
            if piece == "}":
                if not heads:
                    raise ParseError(dialect.name, f"{source}:{number}", "'}' without '{'")
                (head, opened_in, opened), children = heads.pop(), stack.pop()
                stack[-1].append(Node(head, tuple(children), opened, opened_in))
        else:
            if not words:
                start = (source, number)
            words.append(piece)
    if heads:
        _, opened_in, opened = heads[-1]
        raise ParseError(dialect.name, f"{opened_in}:{opened}", "a '{' block is not closed")
    if words:
        stack[-1].append(Node(tuple(words), None, start[1], start[0]))
    return tuple(stack[0])
