"""The conditional operator where C++ and MSL disagree (execution only).

MSL's `c ? a : b` converts the operands as arithmetic types do: `c ? h : 0` (h a half) is a half, `c ? h : x / 16.f`
a float, `c ? v : 0.0f` (v a half4) a half4. In the simulator half, bfloat and the vectors are classes, and C++ calls
such a conditional ambiguous (the half converts to the other type and the other type to half) or ill-formed (a float
does not become a half4 in one conversion); llama.cpp's kernels are full of them. Inside function bodies the
translator writes `c ? a : b` as `::fasim::cond_pick(c, [&]() -> decltype(auto) { return a; }, [&]() -> ... b; })`
(fasim_builtins.h), which evaluates one branch, as `?:` does, and converts both to MSL's common type: the type itself
when both are the same (a reference when both are lvalues of it), half with an integer, float with float,
the vector with a scalar, otherwise what C++'s `?:` gives (std::common_type).

Left as written: conditionals outside function bodies and in statements that need a constant expression
(`constexpr`, `static_assert`, `if constexpr`, `case`), where a lambda is not allowed or not constant in C++17."""

from __future__ import annotations

from typing import Optional

from .lexer import open_angle_before

__all__ = ["ConditionalPass"]

_COND_STOP = {"(", "[", "{", "}", ",", ";", "?", ":", "return", "=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=",
              "<<=", ">>=", "throw", "case", "else", "do"}
_CONSTANT_CONTEXT = {"constexpr", "static_assert", "case", "template", "typedef", "using", "enum"}


class ConditionalPass:
    """Mixin of the translator (translator.py); needs the scopes of space_overloads.py (self._enclosing)."""

    def conditionals(self) -> None:
        toks = self.toks
        for i, t in enumerate(toks):
            if t.text != "?" or self.attr_owner[i] is not None or not self._in_code(i):
                continue
            if i + 1 < len(toks) and toks[i + 1].text == ":":
                continue  # GNU `a ?: b`
            colon = self._cond_colon(i)
            if colon is None:
                continue
            start = self._cond_start(i)
            end = self._cond_end(colon)
            if start is None or end is None or self._constant_statement(start):
                continue
            lam = "[&]() -> decltype(auto) { return "
            self.edits.append((toks[start].start, toks[start].start, "::fasim::cond_pick(("))
            self.edits.append((t.start, t.end, "), " + lam))
            self.edits.append((toks[colon].start, toks[colon].end, "; }, " + lam))
            self.edits.append((toks[end].end, toks[end].end, "; })"))

    def _cond_colon(self, q: int) -> Optional[int]:
        """The ':' that belongs to the '?' at toks[q] (the second operand is any expression, commas included)."""
        j = self._operand_stop(q, at_comma=False)
        return j if j is not None and self.toks[j].text == ":" else None

    def _operand_stop(self, after: int, at_comma: bool) -> Optional[int]:
        """The token that ends the operand starting after toks[after], at bracket depth 0: a closing bracket, a ';',
        the ':' of no '?' inside the operand, or (at_comma) a ','; None at the end of the tokens."""
        toks = self.toks
        depth, nested = 0, 0
        for j in range(after + 1, len(toks)):
            tx = toks[j].text
            if tx in ("(", "[", "{"):
                depth += 1
            elif tx in (")", "]", "}"):
                if depth == 0:
                    return j
                depth -= 1
            elif depth == 0 and tx == "?":
                nested += 1
            elif depth == 0 and tx == ":":
                if nested == 0:
                    return j
                nested -= 1
            elif depth == 0 and (tx == ";" or (at_comma and tx == ",")):
                return j
        return None

    def _cond_start(self, q: int) -> Optional[int]:
        """First token of the condition of the '?' at toks[q] (logical-or-expression: back to an operator of lower
        precedence or an opening bracket)."""
        toks = self.toks
        depth = 0
        j = q - 1
        while j >= 0:
            tx = toks[j].text
            if tx in (")", "]"):
                depth += 1
            elif tx in ("(", "["):
                if depth == 0:
                    break
                depth -= 1
            elif tx in (">", ">>") and j + 1 < q and toks[j + 1].text in ("::", "(", "{"):
                # the end of a template argument list (`is_same<A, vec<B, 4>>::value ? ...`): skip to its '<'
                lt = self._template_open(j)
                if lt is not None:
                    j = lt - 1
                    continue
            elif depth == 0 and (tx in _COND_STOP or toks[j].kind == "pp"):
                break
            elif depth > 0 and tx in ("{", "}", ";"):
                return None
            j -= 1
        return j + 1 if j + 1 < q else None

    def _template_open(self, gt: int) -> Optional[int]:
        """The '<' opening the template argument list that the '>' (or '>>') at toks[gt] closes, when one does:
        balanced, within the statement, after a name."""
        toks = self.toks
        # a '>>' closes an inner list first: its '<' is skipped on the way to the outer one
        j = open_angle_before(toks, gt, lambda t: t.text in (";", "{", "}") or t.kind == "pp",
                              depth=1 if toks[gt].text == ">>" else 0)
        return j if j is not None and j > 0 and toks[j - 1].kind == "id" else None

    def _cond_end(self, colon: int) -> Optional[int]:
        """Last token of the third operand (an assignment-expression: up to a ',', ';' or closing bracket at depth
        0, or the ':' of an enclosing conditional)."""
        j = self._operand_stop(colon, at_comma=True)
        return j - 1 if j is not None and j - 1 > colon else None

    def _constant_statement(self, start: int) -> bool:
        toks = self.toks
        j = start - 1
        while j >= 0 and toks[j].text not in (";", "{", "}") and toks[j].kind != "pp":
            if toks[j].text in _CONSTANT_CONTEXT:
                return True
            j -= 1
        return False
