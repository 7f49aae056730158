"""Functions overloaded on address spaces (MSL specification 3.1, §4 "Address Spaces": a member function may be
qualified with the address space of `this` - `void f() thread`, `void f() device` - and a function may be
overloaded on the address space of a pointer or reference parameter).

MLX's complex.h and gemv/steel headers declare one body per address space (`operator vec<T, 2>() const thread`,
`... const threadgroup`, `... const device`, `... const constant`; `operator+=(thread complex_t<T>&, ...)` next to
`operator+=(device complex_t<T>&, ...)`). The simulator has one address space, so after the translator erases the
qualifiers these are the same function declared several times. C++ (clang included, for the strict check) has no
address-space qualifier on `this` at all. This pass:

* removes the address-space qualifier of `this` (in both modes);
* keeps the first of a group of definitions that are the same declaration once address spaces are erased (in check
  mode: once the `this` qualifier is erased; clang keeps overloads on parameter address spaces apart) and removes the
  others, provided their bodies are the same token for token (address-space keywords aside). Different bodies would
  need the address space at run time, which the simulator does not keep: a TranslateError naming both lines.

Removed text keeps its newlines and preprocessor lines, so line markers stay right.

It also merges overload sets the way MSL's scopes do (merge_metal_overloads): a kernel file is file-scope code
after `using namespace metal;`, so a function it declares there (MLX's `simd_shuffle_down(uint64_t, uint16_t)`) and
metal's function of the same name are found together by an unqualified call. The simulator wraps the file in an
anonymous namespace (emit.py), where the file's declaration would hide metal's: a using-declaration of metal's
function is added after the file's `using namespace metal;` for each such name (METAL_FUNCTIONS)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from .errors import TranslateError
from .lexer import match_angle, open_angle_before

__all__ = ["SpaceOverloadPass"]

_SPACES = ("thread", "threadgroup", "device", "constant")
# MSL functions of the compatibility layer that kernel files overload at file scope (tests/sim checks that each is
# a function of ::metal): the SIMD-group functions, templates here as in Apple's header, so that a kernel's own
# overload for another type (MLX's simd_shuffle(uint64_t, ...)) coexists with them. Not the math functions: the
# simulator declares some as plain functions, which a kernel's definition of the same signature would collide with.
METAL_FUNCTIONS = frozenset("""
    simd_sum simd_product simd_max simd_min simd_and simd_or simd_xor simd_prefix_inclusive_sum
    simd_prefix_exclusive_sum simd_prefix_inclusive_product simd_prefix_exclusive_product simd_shuffle
    simd_broadcast simd_shuffle_xor simd_shuffle_up simd_shuffle_down simd_shuffle_rotate_up
    simd_shuffle_rotate_down simd_shuffle_and_fill_up simd_shuffle_and_fill_down simd_broadcast_first
""".split())


class SpaceOverloadPass:
    """Mixin of the translator (translator.py); run after the main pass, before emit."""

    def this_space_at(self, i: int) -> bool:
        """toks[i] is an address space qualifying `this`: after the ')' of a parameter list, possibly after const."""
        toks = self.toks
        p = self.prev_sig(i)
        if p is not None and toks[p].text == "const":
            p = self.prev_sig(p)
        if p is None or toks[p].text != ")":
            return False
        nxt = i + 1
        while nxt < len(toks) and (self.attr_owner[nxt] is not None or toks[nxt].text in ("const", "noexcept")):
            nxt += 1
        return nxt < len(toks) and toks[nxt].text in ("{", ";", ":", "=", "->")

    def function_extent(self, close_paren: int) -> Optional[Tuple[int, int, int]]:
        """(first token, index of the body's '{', last token) of the function definition whose parameter list
        closes at close_paren; None for a declaration without a body."""
        toks = self.toks
        k = close_paren + 1
        while k < len(toks) and toks[k].text not in ("{", ";", ":"):
            k += 1
        if k >= len(toks) or toks[k].text == ";":
            return None
        if toks[k].text == ":":  # constructor: skip the member initialisers to the body's brace
            k += 1
            depth = 0
            while k < len(toks):
                tx = toks[k].text
                if tx in ("(", "["):
                    depth += 1
                elif tx in (")", "]"):
                    depth -= 1
                elif tx == "{" and depth == 0:
                    if toks[k - 1].kind == "id" or toks[k - 1].text == ">":
                        k = self._match(k, "{", "}")  # a braced member initialiser
                    else:
                        break
                k += 1
            if k >= len(toks):
                return None
        body_open = k
        end = self._match(body_open, "{", "}")
        return self._decl_start(self._match_back(close_paren)), body_open, end

    def specialization_extent(self, i: int) -> Optional[Tuple[int, int, int]]:
        """(first token, body's '{', last token) of the class template specialization whose template argument list
        holds toks[i] (`struct pointer_element<device T*> { ... };`, MLX's steel type traits), else None."""
        toks = self.toks
        j = open_angle_before(toks, i, lambda t: t.text in (";", "{", "}", "(", ")"))
        if j is None or j < 2 or toks[j - 1].kind != "id" or toks[j - 2].text not in ("struct", "class"):
            return None
        k = match_angle(toks, j) + 1
        while k < len(toks) and toks[k].text not in ("{", ";"):
            k += 1
        if k >= len(toks) or toks[k].text == ";":
            return None
        end = self._match(k, "{", "}")
        if end + 1 < len(toks) and toks[end + 1].text == ";":
            end += 1
        return self._decl_start(j - 2), k, end

    def _decl_start(self, j: int) -> int:
        """First token of the declaration around toks[j]: after the previous one's end (`;`, a brace, a
        preprocessor line, an access specifier)."""
        toks = self.toks
        depth = 0
        while j > 0:
            t = toks[j - 1]
            if t.text in (")", "]"):
                depth += 1
            elif t.text in ("(", "["):
                depth -= 1
            elif depth == 0 and (t.text in (";", "{", "}") or t.kind == "pp"):
                break
            elif depth == 0 and t.text == ":" and j >= 2 and toks[j - 2].text in ("public", "private", "protected"):
                break
            j -= 1
        return j

    def _match(self, i: int, open_: str, close: str) -> int:
        depth = 0
        for j in range(i, len(self.toks)):
            if self.toks[j].text == open_:
                depth += 1
            elif self.toks[j].text == close:
                depth -= 1
                if depth == 0:
                    return j
        raise self.err(i, f"unbalanced '{open_}'")

    def _match_back(self, close_paren: int) -> int:
        depth = 0
        for j in range(close_paren, -1, -1):
            if self.toks[j].text == ")":
                depth += 1
            elif self.toks[j].text == "(":
                depth -= 1
                if depth == 0:
                    return j
        raise self.err(close_paren, "unbalanced ')'")

    def _words(self, a: int, b: int, drop) -> Tuple[str, ...]:
        return tuple(self.toks[k].text for k in range(a, b + 1)
                     if self.toks[k].kind != "pp" and self.attr_owner[k] is None and k not in drop)

    def _scopes(self) -> None:
        """For every token the '{' of the innermost block around it (-1: file scope), and which braces open code
        (a function body or a block in one) rather than a namespace or class; one forward pass."""
        toks = self.toks
        self._enclosing: List[int] = [-1] * len(toks)
        self._code_brace: Dict[int, bool] = {}
        stack: List[int] = []
        for i, t in enumerate(toks):
            self._enclosing[i] = stack[-1] if stack else -1
            if t.text == "{":
                p = self.prev_sig(i)
                prev = toks[p].text if p is not None else ""
                inside_code = bool(stack) and self._code_brace[stack[-1]]
                self._code_brace[i] = inside_code or prev in (")", "const", "noexcept", "mutable") or prev in _SPACES
                stack.append(i)
            elif t.text == "}" and stack:
                stack.pop()

    def space_overloads(self) -> None:
        toks = self.toks
        self._scopes()
        this_quals = set()
        for i, t in enumerate(toks):
            if (t.kind == "id" and t.text in _SPACES and self.attr_owner[i] is None
                    and not self._in_code(i) and self.this_space_at(i)):
                this_quals.add(i)
                self.replace_range(t.start, t.end, "")  # replaces address_space()'s edit of this token
        groups: Dict[tuple, Tuple[int, Tuple[str, ...]]] = {}
        seen_close, seen_bodies = set(), set()
        for i, t in enumerate(toks):
            if not (t.kind == "id" and t.text in _SPACES and self.attr_owner[i] is None) or self._in_code(i):
                continue
            if i in this_quals:
                close = self.prev_sig(i)
                if toks[close].text == "const":
                    close = self.prev_sig(close)
            else:
                close = self._enclosing_paren_close(i)
            if close is None:
                ext = self.specialization_extent(i)
                if ext is None or ext[1] in seen_close:
                    continue
                seen_close.add(ext[1])
            else:
                if close in seen_close:
                    continue
                seen_close.add(close)
                ext = self.function_extent(close)
                if ext is None:
                    continue
            start, body, end = ext
            if body in seen_bodies:
                continue  # the same definition reached from another parenthesis (a function-pointer parameter)
            seen_bodies.add(body)
            all_spaces = {k for k in range(start, body) if toks[k].text in _SPACES}
            # exec: every address space is erased; check: only the `this` qualifier is
            drop = all_spaces if self.mode == "exec" else (all_spaces & this_quals)
            key = (self._enclosing[start], self._words(start, body - 1, drop))
            body_words = self._words(body, end, {k for k in range(body, end + 1) if toks[k].text in _SPACES})
            if key not in groups:
                groups[key] = (start, body_words)
                continue
            first_start, first_body = groups[key]
            if first_body != body_words:
                raise TranslateError(
                    f"{self.src.where(toks[start].line)}: this function differs from the one at "
                    f"{self.src.where(toks[first_start].line)} only in address spaces but has another body; the "
                    "simulator keeps one address space and cannot tell them apart")
            self.remove_keeping_lines(start, end)
        if self.mode == "exec":
            self.merge_metal_overloads()

    def _in_code(self, i: int) -> bool:
        e = self._enclosing[i]
        return e >= 0 and self._code_brace[e]

    def _enclosing_paren_close(self, i: int) -> Optional[int]:
        """The ')' closing the parameter list around toks[i] (None: not in a parenthesis of a declarator)."""
        toks = self.toks
        depth = 0
        for j in range(i, -1, -1):
            tx = toks[j].text
            if tx in (")", "]"):
                depth += 1
            elif tx == "[":
                depth -= 1
            elif tx in ("{", "}", ";"):
                return None
            elif tx == "(":
                if depth == 0:
                    p = self.prev_sig(j)
                    if p is None or toks[p].text in ("if", "for", "while", "switch", "decltype", "sizeof",
                                                       "alignof", "static_assert", "__attribute__"):
                        return None
                    return self._match(j, "(", ")")
                depth -= 1
        return None

    def merge_metal_overloads(self) -> None:
        """See the module's docstring; uses the scopes space_overloads() computed."""
        toks = self.toks
        directive = None
        names = []
        for i, t in enumerate(toks):
            if self._enclosing[i] != -1 or t.kind != "id" or self.attr_owner[i] is not None:
                continue
            if (directive is None and t.text == "using" and i + 3 < len(toks) and toks[i + 1].text == "namespace"
                    and toks[i + 2].text == "metal" and toks[i + 3].text == ";"):
                directive = i + 3
            elif (directive is not None and t.text in METAL_FUNCTIONS and t.text not in names
                  and i + 1 < len(toks) and toks[i + 1].text == "(" and i > 0
                  and (toks[i - 1].kind == "id" or toks[i - 1].text in (">", "*", "&"))
                  and toks[i - 1].text not in ("return", "else", "case") and self._paren_depth_zero(i)):
                names.append(t.text)
        if names:
            semi = toks[directive]
            self.edits.append((semi.end, semi.end, " " + " ".join(f"using ::metal::{n};" for n in names)))

    def _paren_depth_zero(self, i: int) -> bool:
        """toks[i] is not inside a parenthesis (a declarator at file scope, not an argument list)."""
        depth = 0
        for j in range(i - 1, -1, -1):
            tx = self.toks[j].text
            if tx in (";", "{", "}"):
                return depth == 0
            if tx == ")":
                depth += 1
            elif tx == "(":
                if depth == 0:
                    return False
                depth -= 1
        return depth == 0

    def remove_keeping_lines(self, a: int, b: int) -> None:
        toks = self.toks
        keep: List[str] = []
        pos = toks[a].start
        for k in range(a, b + 1):
            if toks[k].kind == "pp":
                keep.append("\n" * self.text.count("\n", pos, toks[k].start) + toks[k].text)
                pos = toks[k].end
        keep.append("\n" * self.text.count("\n", pos, toks[b].end))
        self.replace_range(toks[a].start, toks[b].end, "".join(keep))
