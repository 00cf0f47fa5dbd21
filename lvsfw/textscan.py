"""Linear-time text helpers shared by the rule scanners and the importers.

Every function here runs in time proportional to its input (no re-joining a growing buffer,
no slicing per token, no regular expression that can backtrack over a whole run of blanks):
a hostile or merely large dump costs seconds, not hours. :func:`comment` makes any text safe
to write as one TOML comment line.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator

#: Characters that must not reach a generated file's comment line as they are: every C0/C1
#: control but tab (a newline would end the comment: the rest becomes live TOML; the others
#: are invalid in TOML comments), DEL, the Unicode line/paragraph separators and the lone
#: surrogates a non-UTF-8 file name decodes to (they cannot be written as UTF-8).
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NFT_PLAIN = re.compile(r'[^"#{};\n]+')
_CONTAINER = re.compile(r"^(table|chain|set|map|flowtable)\b")
_LVS_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|[{}=]|[^\s{}="]+|(")')
_LVS_BARE = re.compile(r'[{}=]|[^\s{}="]+')
_QUOTE_OR_HASH = re.compile(r'["#]')

Statement = tuple[tuple[str, ...], int, str]


def comment(text: str) -> str:
    """``text`` with every character that could end or break a TOML comment escaped
    (``\\x0a``, ``\\u2028``...): one line, valid TOML, nothing live after the ``#``."""
    return _UNSAFE.sub(_escape, text)


def _escape(found: re.Match[str]) -> str:
    code = ord(found[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class LineIndex:
    """The line number (from 1) of any offset in a text, by bisection over line starts."""

    def __init__(self, text: str) -> None:
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line(self, offset: int) -> int:
        """The line holding ``offset``."""
        return bisect.bisect_right(self._starts, offset)


def _head(pieces: list[str]) -> str:
    """The first dozen characters of ``"".join(pieces)`` (enough to tell a block keyword)."""
    head = ""
    for piece in pieces:
        head += piece[:12]
        if len(head) >= 12:
            break
    return head


class _NftReader:
    """The state of :func:`nft_statements` between two special characters."""

    def __init__(self) -> None:
        self.path: list[str] = []
        self.current: list[str] = []  # never starts with whitespace
        self.line = self.start = 1
        self.anon = 0

    def add(self, piece: str) -> None:
        if not self.current:
            piece = piece.lstrip()
            if not piece:
                return
            self.start = self.line
        self.current.append(piece)

    def flush(self) -> Iterator[Statement]:
        statement = " ".join("".join(self.current).split())
        self.current.clear()
        if statement:
            yield tuple(self.path), self.start, statement

    def special(self, char: str) -> Iterator[Statement]:
        """One of ``{ } ; newline`` outside quotes and comments."""
        if char == "\n":
            self.line += 1
        if char == "{" and not self.anon and self.current and _CONTAINER.match(_head(self.current)):
            self.path.append(" ".join("".join(self.current).split()))
            self.current.clear()
        elif char == "{":
            self.anon += 1
            self.add(char)
        elif char == "}" and self.anon:
            self.anon -= 1
            self.add(char)
        elif char == "}":
            yield from self.flush()
            self.path = self.path[:-1]
        elif self.anon:  # ";" or a newline inside an anonymous set
            self.add(" " if char == "\n" else char)
        else:
            yield from self.flush()


def nft_statements(text: str) -> Iterator[Statement]:
    """(enclosing block headers, line, statement) of each nft statement in ``text``.

    ``{`` after ``table``/``chain``/``set``/``map``/``flowtable`` opens a block; any other
    ``{`` is an anonymous set kept inside its statement (newlines in it become blanks). ``#``
    starts a comment outside quotes; statements end at ``;``, a newline or ``}``. Whitespace
    in a statement is collapsed to single blanks; the line is that of its first character.
    """
    reader = _NftReader()
    index, size = 0, len(text)
    while index < size:
        plain = _NFT_PLAIN.match(text, index)
        if plain is not None:
            reader.add(plain[0])
            index = plain.end()
            continue
        char = text[index]
        if char == '"':
            end = text.find('"', index + 1)
            end = size if end < 0 else end + 1
            reader.add(text[index:end])
            reader.line += text.count("\n", index, end)
            index = end
        elif char == "#":
            end = text.find("\n", index)
            index = size if end < 0 else end
        else:
            yield from reader.special(char)
            index += 1
    yield from reader.flush()


def strip_hash_comment(line: str) -> str:
    """``line`` up to its first ``#`` that has an even number of ``"`` after it (a ``#``
    outside quotes on a well-quoted line)."""
    if "#" not in line:
        return line
    after = line.count('"')
    for found in _QUOTE_OR_HASH.finditer(line):
        if found[0] == '"':
            after -= 1
        elif after % 2 == 0:
            return line[: found.start()]
    return line


def lvs_tokens(line: str) -> list[str]:
    """The words of one lvs.cf line: ``"quoted strings"``, ``{``, ``}``, ``=`` and runs of
    anything else but blanks. A ``"`` that opens no closed string is dropped; every later one
    on the line then cannot close one either, so the rest is read without quoting."""
    tokens: list[str] = []
    for found in _LVS_TOKEN.finditer(line):
        if found[1] is None:
            tokens.append(found[0])
            continue
        tokens += _LVS_BARE.findall(line, found.end())
        break
    return tokens
