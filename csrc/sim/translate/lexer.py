"""Tokens of preprocessed MSL for the translator, and the bracket helpers every pass uses."""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, List, Optional, Tuple

from .errors import TranslateError

__all__ = ["Tok", "TOKEN_RE", "tokenize", "match", "match_angle", "open_angle_before", "split_top", "c_string"]

TOKEN_RE = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+|\n)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<str>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
  | (?P<num>\.?\d(?:[\w.]|[eEpP][+-])*)
  | (?P<id>[A-Za-z_]\w*)
  | (?P<punct>::|->|\+\+|--|<<=|>>=|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^]=|[-+*/%&|^!~=<>?:;,.(){}\[\]\#])
    """,
    re.VERBOSE | re.DOTALL,
)
_DIRECTIVE_START_RE = re.compile(r"[ \t]*#")


@dataclasses.dataclass
class Tok:
    kind: str  # "pp" (a whole directive line), "str", "num", "id", "punct"
    text: str
    start: int
    end: int
    line: int  # line index in the text (0-based)


def tokenize(text: str, where: Optional[Callable[[int], str]] = None) -> List[Tok]:
    """Tokens of `text`; a preprocessor directive (with its continuation lines) is one "pp" token. `where(line)`
    names a line for messages."""
    toks: List[Tok] = []
    pos, line, n = 0, 0, len(text)
    at_line_start = True
    while pos < n:
        if at_line_start and _DIRECTIVE_START_RE.match(text, pos):
            end = pos
            while True:
                nl = text.find("\n", end)
                if nl < 0:
                    nl = n
                    break
                if text[nl - 1] == "\\":
                    end = nl + 1
                    continue
                break
            toks.append(Tok("pp", text[pos:nl], pos, nl, line))
            line += text.count("\n", pos, nl)
            pos = nl
            continue
        m = TOKEN_RE.match(text, pos)
        if not m:
            at = f"{where(line)}: " if where else ""
            raise TranslateError(f"{at}unexpected character {text[pos]!r}")
        kind = m.lastgroup
        s = m.group()
        if kind == "ws":
            if s == "\n":
                line += 1
                at_line_start = True
            pos = m.end()
            continue
        at_line_start = False
        if kind == "comment":
            line += s.count("\n")
            pos = m.end()
            continue
        toks.append(Tok(kind, s, pos, m.end(), line))
        pos = m.end()
    return toks


def match(toks: List[Tok], i: int, open_: str, close: str) -> int:
    """Index of the token closing the bracket opened at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        t = toks[j].text
        if t == open_:
            depth += 1
        elif t == close:
            depth -= 1
            if depth == 0:
                return j
    raise TranslateError(f"unbalanced {open_!r}")


def match_angle(toks: List[Tok], i: int) -> int:
    """Index of the '>' (or '>>') closing the template argument list opened at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        t = toks[j].text
        if t == "<":
            depth += 1
        elif t == ">":
            depth -= 1
        elif t == ">>":
            depth -= 2
        if depth <= 0:
            return j
    raise TranslateError("unbalanced '<'")


def open_angle_before(toks: List[Tok], i: int, stop: Callable[[Tok], bool], depth: int = 0) -> Optional[int]:
    """Index of the '<' whose template argument list is still open at toks[i], scanning back from toks[i - 1] ('>'
    closes one list, '>>' two; `depth` lists already closed at toks[i] are skipped as well), or None when a token
    for which stop() holds comes first. Several passes ask this of a '<' that may also be a less-than, each with the
    statement boundaries of its own context as `stop`."""
    for j in range(i - 1, -1, -1):
        t = toks[j]
        if stop(t):
            return None
        if t.text == ">":
            depth += 1
        elif t.text == ">>":
            depth += 2
        elif t.text == "<":
            if depth == 0:
                return j
            depth -= 1
    return None


def split_top(toks: List[Tok], lo: int, hi: int) -> List[Tuple[int, int]]:
    """Split toks[lo:hi] at top-level commas (ignoring commas inside (), [], {}, <>)."""
    parts, depth, start = [], 0, lo
    for j in range(lo, hi):
        t = toks[j].text
        if t in ("(", "[", "{", "<"):
            depth += 1
        elif t in (")", "]", "}", ">"):
            depth -= 1
        elif t == ">>":
            depth -= 2
        elif t == "," and depth == 0:
            parts.append((start, j))
            start = j + 1
    if start < hi:
        parts.append((start, hi))
    return parts


def c_string(s: str) -> str:
    """`s` escaped for a C string literal."""
    return s.replace("\\", "\\\\").replace('"', '\\"')
