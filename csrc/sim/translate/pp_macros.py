"""Macro definitions and their expansion (C++ [cpp.replace]): object- and function-like macros, variadic ones
(__VA_ARGS__, and GNU's `, ## __VA_ARGS__` comma elision), # and ##, rescanning with hide sets (a macro's own name is
never expanded again inside its replacement), and the predefined __LINE__, __FILE__ and __COUNTER__."""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional

from .errors import TranslateError
from .pp_tokens import PPTok, lex_one

__all__ = ["Macro", "Expander", "stringize"]


@dataclasses.dataclass
class Macro:
    name: str
    params: Optional[List[str]]  # None: object-like
    body: List[PPTok]            # tokens; a parameter's tokens carry param_of
    variadic: bool = False
    file: str = ""
    line: int = 0


def stringize(toks: List[PPTok], at: PPTok) -> PPTok:
    """The # operator: the argument's spelling as a string literal (one space where the source had whitespace)."""
    parts = []
    for i, t in enumerate(toks):
        s = t.text
        if t.kind == "str":
            s = s.replace("\\", "\\\\").replace('"', '\\"')
        parts.append((" " if i and t.space else "") + s)
    return PPTok("str", '"' + "".join(parts) + '"', at.file, at.line)


class Expander:
    """Expands macros in token lists. `where(tok)` formats a token's position for messages."""

    def __init__(self, macros: Dict[str, Macro], where: Callable[[PPTok], str]):
        self.macros = macros
        self.where = where
        self.counter = 0

    def expand(self, toks: List[PPTok]) -> List[PPTok]:
        out: List[PPTok] = []
        stack = list(reversed(toks))  # stack.pop() is the next token
        while stack:
            t = stack.pop()
            if t.kind != "id" or t.text in t.hide:
                out.append(t)
                continue
            name = t.text
            if name in ("__LINE__", "__FILE__", "__COUNTER__") and name not in self.macros:
                out.append(self._builtin(t))
                continue
            m = self.macros.get(name)
            if m is None:
                out.append(t)
                continue
            if m.params is None:
                stack.extend(reversed(self._substitute(m, [], t.hide | {name}, t)))
                continue
            if not stack or stack[-1].text != "(":
                out.append(t)  # a function-like macro's name without arguments is an ordinary identifier
                continue
            stack.pop()
            args, rparen = self._arguments(stack, m, t)
            stack.extend(reversed(self._substitute(m, args, (t.hide & rparen.hide) | {name}, t)))
        return out

    def _builtin(self, t: PPTok) -> PPTok:
        if t.text == "__LINE__":
            return t.copy(kind="num", text=str(t.line))
        if t.text == "__FILE__":
            return t.copy(kind="str", text='"' + t.file.replace("\\", "\\\\").replace('"', '\\"') + '"')
        self.counter += 1
        return t.copy(kind="num", text=str(self.counter - 1))

    def _arguments(self, stack: List[PPTok], m: Macro, at: PPTok):
        args: List[List[PPTok]] = [[]]
        depth = 0
        while True:
            if not stack:
                raise TranslateError(f"{self.where(at)}: unterminated argument list of macro '{m.name}'")
            t = stack.pop()
            if t.text == "(":
                depth += 1
            elif t.text == ")":
                if depth == 0:
                    break
                depth -= 1
            elif t.text == "," and depth == 0 and not (m.variadic and len(args) == len(m.params)):
                args.append([])
                continue
            args[-1].append(t)
        n = len(m.params)
        if n == 0 and args == [[]]:
            args = []
        if m.variadic and len(args) == n - 1:
            args.append([])  # F(a) for F(x, ...): __VA_ARGS__ empty
        if len(args) != n:
            raise TranslateError(f"{self.where(at)}: macro '{m.name}' takes {n} argument(s), given {len(args)}")
        return args, t

    def _substitute(self, m: Macro, args: List[List[PPTok]], hide, at: PPTok) -> List[PPTok]:
        body = m.body
        res: List[Optional[PPTok]] = []  # None: a placemarker (an empty argument next to ##)
        pastes: List[int] = []
        expanded: Dict[int, List[PPTok]] = {}
        i = 0
        while i < len(body):
            b = body[i]
            if b.text == "#" and m.params is not None and i + 1 < len(body) and body[i + 1].param_of is not None:
                res.append(stringize(args[body[i + 1].param_of], at).copy(space=b.space))
                i += 2
                continue
            if b.text == "##" and b.param_of is None:
                nxt = body[i + 1] if i + 1 < len(body) else None
                if (m.variadic and i > 0 and body[i - 1].text == "," and nxt is not None
                        and nxt.param_of == len(m.params) - 1):
                    # GNU: `, ## __VA_ARGS__` drops the comma when __VA_ARGS__ is empty, and pastes nothing
                    if not args[nxt.param_of]:
                        if res and res[-1] is not None and res[-1].text == ",":
                            res.pop()
                        i += 2
                    else:
                        i += 1
                    continue
                pastes.append(len(res))
                i += 1
                continue
            if b.param_of is not None:
                raw = (i + 1 < len(body) and body[i + 1].text == "##") or (i > 0 and body[i - 1].text == "##")
                if raw:
                    toks = [x.copy() for x in args[b.param_of]]
                else:
                    if b.param_of not in expanded:
                        expanded[b.param_of] = self.expand(args[b.param_of])
                    toks = [x.copy() for x in expanded[b.param_of]]
                if toks:
                    toks[0].space = b.space
                    res.extend(toks)
                elif raw:
                    res.append(None)
                i += 1
                continue
            res.append(b.copy())
            i += 1
        res = [t for t in self._paste(res, pastes, m, at) if t is not None]
        out = [t.copy(hide=t.hide | hide, file=at.file, line=at.line) for t in res]
        if out:
            out[0].space = at.space  # the expansion stands where the macro's name stood
        return out

    def _paste(self, res: List[Optional[PPTok]], pastes: List[int], m: Macro, at: PPTok) -> List[Optional[PPTok]]:
        """Apply ## at the recorded positions, left to right (each joins res[p-1] and res[p]; every paste shortens
        the list by one, hence the offset)."""
        offset = 0
        for p in pastes:
            p -= offset
            if p <= 0 or p >= len(res):
                raise TranslateError(f"{self.where(at)}: '##' at the edge of macro '{m.name}'")
            left, right = res[p - 1], res[p]
            if left is None or right is None:
                merged = right if left is None else left
            else:
                tok = lex_one(left.text + right.text, at.file, at.line)
                if tok is None:
                    raise TranslateError(f"{self.where(at)}: pasting '{left.text}' and '{right.text}' in macro "
                                         f"'{m.name}' does not give a valid token")
                merged = tok.copy(space=left.space, hide=left.hide & right.hide)
            res[p - 1:p + 1] = [merged]
            offset += 1
        return res
