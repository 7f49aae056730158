"""Preprocessing tokens (C++ [lex.pptoken]) of one source file, line by line, for the MSL preprocessor."""

from __future__ import annotations

import re
from typing import FrozenSet, List, Optional

__all__ = ["PPTok", "lex_lines", "lex_one", "PUNCT_RE"]

PUNCT_RE = re.compile(r"\.\.\.|<<=|>>=|->\*|::|->|\+\+|--|<<|>>|<=|>=|==|!=|&&|\|\||##|[-+*/%&|^]=|"
                      r"[-+*/%&|^!~=<>?:;,.(){}\[\]#@$\\`]")
_PP_RE = re.compile(
    r"""
    (?P<nl>\n)
  | (?P<ws>[ \t\r\f\v]+|//[^\n]*|/\*.*?\*/)
  | (?P<str>(?:u8|[uUL])?"(?:\\.|[^"\\\n])*"|(?:u8|[uUL])?'(?:\\.|[^'\\\n])*')
  | (?P<num>\.?\d(?:[\w.]|[eEpP][+-]|'(?=\w))*)
  | (?P<id>[A-Za-z_]\w*)
    """,
    re.VERBOSE | re.DOTALL,
)
_EMPTY: FrozenSet[str] = frozenset()


class PPTok:
    """One preprocessing token: kind ("id", "num", "str", "punct", "other"), text, where it comes from (file and line
    of the source, or of the macro invocation that produced it), whether whitespace precedes it, and the set of macro
    names it must no longer expand (the hide set of the standard's rescanning rule)."""

    __slots__ = ("kind", "text", "file", "line", "space", "hide", "param_of")

    def __init__(self, kind: str, text: str, file: str, line: int, space: bool = False,
                 hide: FrozenSet[str] = _EMPTY):
        self.kind = kind
        self.text = text
        self.file = file
        self.line = line
        self.space = space
        self.hide = hide
        self.param_of: Optional[int] = None  # in a macro body: the index of the parameter this token names

    def copy(self, **changes) -> "PPTok":
        t = PPTok(self.kind, self.text, self.file, self.line, self.space, self.hide)
        t.param_of = self.param_of
        for k, v in changes.items():
            setattr(t, k, v)
        return t

    def __repr__(self) -> str:  # for messages and debugging
        return f"PPTok({self.kind}, {self.text!r}, {self.file}:{self.line})"


def _splice(text: str):
    """Text with backslash-newlines removed, and the physical line number (1-based) each remaining line starts on."""
    out, starts = [], []
    phys = 1
    pending = False
    for raw in text.split("\n"):
        if not pending:
            starts.append(phys)
        body = raw[:-1] if raw.endswith("\r") else raw
        if body.endswith("\\"):
            out.append(body[:-1])
            pending = True
        else:
            out.append(body + "\n")
            pending = False
        phys += 1
    return "".join(out), starts


def lex_lines(text: str, file: str) -> List[List[PPTok]]:
    """Logical lines of tokens (a block comment spanning lines joins them, as in C); every token knows its physical
    line. Characters that start no token become "other" tokens (they only matter if they are ever compiled)."""
    spliced, starts = _splice(text)
    lines: List[List[PPTok]] = [[]]
    pos, n, li = 0, len(spliced), 0
    space = False
    while pos < n:
        m = _PP_RE.match(spliced, pos)
        if m is None:
            p = PUNCT_RE.match(spliced, pos)
            s = p.group() if p else spliced[pos]
            lines[-1].append(PPTok("punct" if p else "other", s, file, starts[min(li, len(starts) - 1)], space))
            space = False
            pos += len(s)
            continue
        kind, s = m.lastgroup, m.group()
        pos = m.end()
        if kind == "nl":
            li += 1
            lines.append([])
            space = False
        elif kind == "ws":
            space = True
            li += s.count("\n")  # a block comment over several lines: one whitespace, later tokens on later lines
        else:
            lines[-1].append(PPTok(kind, s, file, starts[min(li, len(starts) - 1)], space))
            space = False
    return lines


def lex_one(text: str, file: str, line: int) -> Optional[PPTok]:
    """The single token `text` spells (the result of ## pasting), or None if it is not exactly one token."""
    m = _PP_RE.fullmatch(text)
    if m and m.lastgroup in ("str", "num", "id"):
        return PPTok(m.lastgroup, text, file, line)
    p = PUNCT_RE.fullmatch(text)
    if p:
        return PPTok("punct", text, file, line)
    return None
