"""Evaluation of #if / #elif controlling expressions (C++ [cpp.cond]): integer constant expressions over macro-expanded
tokens, with `defined`, `__has_include` and C++'s `true`/`false`; any other identifier left after expansion is 0.

Values are Python integers (no wrap-around at 64 bits, no unsigned conversions): kernels compare versions and sizes
here, where that makes no difference."""

from __future__ import annotations

import re
from typing import Callable, List

from .errors import TranslateError
from .pp_tokens import PPTok

__all__ = ["evaluate"]

_INT_RE = re.compile(r"^(0[xX][0-9a-fA-F']+|0[bB][01']+|0[0-7']*|[1-9][0-9']*)([uUlLzZ]*)$")
_CHAR_ESCAPES = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, "'": 39, '"': 34, "a": 7, "b": 8, "f": 12, "v": 11}
# binary operators: precedence (higher binds tighter)
_BINARY = {"*": 10, "/": 10, "%": 10, "+": 9, "-": 9, "<<": 8, ">>": 8, "<": 7, ">": 7, "<=": 7, ">=": 7,
           "==": 6, "!=": 6, "&": 5, "^": 4, "|": 3, "&&": 2, "||": 1}
# Compiler feature tests: answering them would claim a compiler the simulator is not.
_FEATURE_TESTS = {"__has_attribute", "__has_cpp_attribute", "__has_builtin", "__has_feature", "__has_extension",
                  "__has_declspec_attribute", "__is_identifier"}


def _int(tok: PPTok, where: str) -> int:
    text = tok.text
    if tok.kind == "str" and text.startswith("'"):
        body = text[1:-1]
        if body.startswith("\\"):
            if body[1:2] in _CHAR_ESCAPES:
                return _CHAR_ESCAPES[body[1]]
            if body[1:2] in "xX":
                return int(body[2:], 16)
            return int(body[1:], 8)
        return ord(body) if len(body) == 1 else 0
    m = _INT_RE.match(text)
    if tok.kind != "num" or not m:
        raise TranslateError(f"{where}: '{text}' is not an integer in a #if expression")
    digits = m.group(1).replace("'", "")
    if digits[:2] in ("0x", "0X"):
        return int(digits[2:], 16)
    if digits[:2] in ("0b", "0B"):
        return int(digits[2:], 2)
    if len(digits) > 1 and digits[0] == "0":
        return int(digits[1:], 8)
    return int(digits)


class _Parser:
    def __init__(self, toks: List[PPTok], where: str):
        self.toks = toks
        self.i = 0
        self.where = where

    def peek(self) -> str:
        return self.toks[self.i].text if self.i < len(self.toks) else ""

    def take(self) -> PPTok:
        if self.i >= len(self.toks):
            raise TranslateError(f"{self.where}: #if expression ends too early")
        self.i += 1
        return self.toks[self.i - 1]

    def expect(self, text: str) -> None:
        t = self.take()
        if t.text != text:
            raise TranslateError(f"{self.where}: expected '{text}' in #if expression, found '{t.text}'")

    def conditional(self) -> int:
        c = self.binary(1)
        if self.peek() == "?":
            self.take()
            a = self.conditional()
            self.expect(":")
            b = self.conditional()
            return a if c else b
        return c

    def binary(self, min_prec: int) -> int:
        left = self.unary()
        while True:
            op = self.peek()
            prec = _BINARY.get(op)
            if prec is None or prec < min_prec:
                return left
            self.take()
            if op == "&&":  # no short circuit needed for values, but a division by zero on the dead side is fine
                right = self.binary(prec + 1)
                left = int(bool(left) and bool(right))
                continue
            if op == "||":
                right = self.binary(prec + 1)
                left = int(bool(left) or bool(right))
                continue
            right = self.binary(prec + 1)
            left = self.apply(op, left, right)

    def apply(self, op: str, a: int, b: int) -> int:
        if op in ("/", "%") and b == 0:
            raise TranslateError(f"{self.where}: division by zero in #if expression")
        if op == "/":
            q = abs(a) // abs(b)
            return q if (a >= 0) == (b >= 0) else -q  # C truncates toward zero
        if op == "%":
            return a - b * self.apply("/", a, b)
        return {"*": lambda: a * b, "+": lambda: a + b, "-": lambda: a - b, "<<": lambda: a << b,
                ">>": lambda: a >> b, "<": lambda: int(a < b), ">": lambda: int(a > b), "<=": lambda: int(a <= b),
                ">=": lambda: int(a >= b), "==": lambda: int(a == b), "!=": lambda: int(a != b),
                "&": lambda: a & b, "^": lambda: a ^ b, "|": lambda: a | b}[op]()

    def unary(self) -> int:
        op = self.peek()
        if op in ("+", "-", "!", "~"):
            self.take()
            v = self.unary()
            return {"+": v, "-": -v, "!": int(not v), "~": ~v}[op]
        if op == "(":
            self.take()
            v = self.conditional()
            self.expect(")")
            return v
        t = self.take()
        if t.kind == "id":
            if t.text == "true":
                return 1
            if self.peek() == "(":
                raise TranslateError(f"{self.where}: '{t.text}(...)' in a #if expression is not a macro the "
                                     "simulator's preprocessor knows")
            return 0  # any other identifier after macro expansion
        return _int(t, self.where)


def evaluate(toks: List[PPTok], expand: Callable[[List[PPTok]], List[PPTok]], is_defined: Callable[[str], bool],
             has_include: Callable[[str, bool], bool], where: str) -> int:
    """Value of a #if expression. `expand` macro-expands tokens; `is_defined(name)`; `has_include(name, quoted)`."""
    pre: List[PPTok] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.kind == "id" and t.text in ("defined", "__has_include"):
            j = i + 1
            paren = j < len(toks) and toks[j].text == "("
            if paren:
                j += 1
            if t.text == "defined":
                if j >= len(toks) or toks[j].kind != "id":
                    raise TranslateError(f"{where}: 'defined' needs a macro name")
                value = is_defined(toks[j].text)
                j += 1
            else:
                if not paren:
                    raise TranslateError(f"{where}: __has_include needs parentheses")
                if j < len(toks) and toks[j].kind == "str":
                    value = has_include(toks[j].text[1:-1], True)
                    j += 1
                elif j < len(toks) and toks[j].text == "<":
                    k = j + 1
                    while k < len(toks) and toks[k].text != ">":
                        k += 1
                    value = has_include("".join(x.text for x in toks[j + 1:k]), False)
                    j = k + 1
                else:
                    raise TranslateError(f"{where}: __has_include needs \"file\" or <file>")
            if paren:
                if j >= len(toks) or toks[j].text != ")":
                    raise TranslateError(f"{where}: missing ')' after {t.text}")
                j += 1
            pre.append(t.copy(kind="num", text="1" if value else "0"))
            i = j
            continue
        if t.kind == "id" and t.text in _FEATURE_TESTS:
            raise TranslateError(f"{where}: {t.text} in #if: the simulator's preprocessor does not answer compiler "
                                 "feature tests (Apple's compiler and the simulator's differ); test "
                                 "__METAL_VERSION__ instead")
        pre.append(t)
        i += 1
    expanded = expand(pre)
    if not expanded:
        raise TranslateError(f"{where}: empty #if expression")
    p = _Parser(expanded, where)
    v = p.conditional()
    if p.i != len(expanded):
        raise TranslateError(f"{where}: unexpected '{expanded[p.i].text}' in #if expression")
    return v
