"""The MSL preprocessor: runs before the translator, so that macro-generated kernels, #if branches and -D values reach
it as the Metal compiler would see them (C++ [cpp]: #include, #define/#undef, #if/#ifdef/#ifndef/#elif/#else/#endif,
#error, #warning, #pragma, #line).

It is the only preprocessor that reads the user's code: its output keeps no directive but #pragma, #line markers and
the #error it puts where a system header is included, so the C++ compiler that later builds the translation sees
exactly the code that was checked. `#include "x.h"` inlines a file next to the including one (or in an include
directory); `<metal_*>` (and `<simd/simd.h>`) become the compatibility header, included once at the top by the
translator; any other `<...>` header is an `#error` at that point (only reached if no #if removes it).

Predefined: __METAL_VERSION__ (310: MSL 3.1, the version the compatibility layer implements, bfloat included),
__METAL__ (1, as Apple's compiler: headers shared with host code test it, MLX's defines.h),
__HAVE_BFLOAT__, __cplusplus (201703L: MSL 3 is based on C++17), __FILE__, __LINE__, __COUNTER__, the macros
<metal_stdlib> defines (METAL_STDLIB_MACROS: defined, left for the compiler to expand) and, when translating for the
simulator, FASIM."""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Set, Tuple

from .errors import TranslateError
from .lexer import c_string
from .pp_expr import evaluate
from .pp_macros import Expander, Macro
from .pp_tokens import PUNCT_RE, PPTok, lex_lines

__all__ = ["Preprocessed", "preprocess", "METAL_STDLIB_MACROS", "PREDEFINED"]

PREDEFINED = {"__METAL_VERSION__": "310", "__METAL__": "1", "__HAVE_BFLOAT__": "1", "__cplusplus": "201703L"}
# Macros the compatibility header defines as <metal_stdlib> does (csrc/sim/include/fasim_math.h and, for the strict
# check, fasim_check.h; tests/test_sim_preprocess.py keeps this list and the headers in step).
METAL_STDLIB_MACROS = frozenset({
    "INFINITY", "NAN", "HUGE_VALF", "FLT_MAX", "FLT_MIN", "FLT_EPSILON", "MAXFLOAT", "HALF_MAX", "HALF_MIN",
    "M_E_F", "M_LOG2E_F", "M_LOG10E_F", "M_LN2_F", "M_LN10_F", "M_PI_F", "M_PI_2_F", "M_SQRT2_F", "M_SQRT1_2_F",
    "METAL_FUNC", "MAXHALF",
})
_IGNORED_SYSTEM_HEADERS = ("simd/simd.h",)
_NEAR_GAP = 8  # blank lines (instead of a #line marker) to bridge a gap this small


@dataclasses.dataclass
class Preprocessed:
    lines: List[str]                 # the preprocessed text, line by line
    origin: List[Tuple[str, int]]    # (file, line) each output line comes from
    deps: List[str]                  # absolute paths of the local headers included
    warnings: List[str]

    def where(self, line_index: int) -> str:
        f, ln = self.origin[min(line_index, len(self.origin) - 1)]
        return f"{f}:{ln}"


@dataclasses.dataclass
class _Cond:
    active: bool       # this branch is being read
    taken: bool        # some branch of this #if was taken
    parent: bool       # the enclosing region is being read
    else_seen: bool
    where: str


class _Preprocessor:
    def __init__(self, include_dirs: Sequence[str], defines: Dict[str, str]):
        self.include_dirs = [str(d) for d in include_dirs]
        self.macros: Dict[str, Macro] = {}
        self.opaque = set(METAL_STDLIB_MACROS)  # defined, expanded by the C++ compiler (not by us)
        self.expander = Expander(self.macros, self.where)
        self.out: List[Tuple[str, PPTok]] = []   # ("tok", token) or ("line", token carrying text and origin)
        self.deps: List[str] = []
        self.warnings: List[str] = []
        self.once: Set[str] = set()
        for name, value in defines.items():
            self.define_text(name, value)

    @staticmethod
    def where(t: PPTok) -> str:
        return f"{t.file}:{t.line}"

    def define_text(self, name: str, value: str) -> None:
        toks = [t for ln in lex_lines(value, "<command line>") for t in ln]
        if not name.isidentifier():
            raise TranslateError(f"-D {name}={value}: '{name}' is not a macro name")
        self.macros[name] = Macro(name, None, toks, file="<command line>")

    # -- files ---------------------------------------------------------------------------------------------
    def run_file(self, path: str, text: str, display: str, stack: Tuple[str, ...]) -> None:
        conds: List[_Cond] = []
        block: List[PPTok] = []  # text lines since the last directive: expanded together (invocations span lines)
        shift: Optional[Tuple[str, int, int]] = None  # after #line: (file, line it names, physical line of it)
        for ln in lex_lines(text, display):
            phys = ln[0].line if ln else 0
            if shift is not None:
                for t in ln:
                    t.file, t.line = shift[0], shift[1] + (t.line - shift[2] - 1)
            active = not conds or conds[-1].active
            if ln and ln[0].text == "#":
                if block:
                    self.emit_tokens(self.expander.expand(block))
                    block = []
                named = self.directive(ln, conds, active, path, stack)
                if named is not None:
                    shift = (named[0], named[1], phys)
            elif active:
                block.extend(ln)
        if block:
            self.emit_tokens(self.expander.expand(block))
        if conds:
            raise TranslateError(f"{conds[-1].where}: #if without #endif")

    def find_include(self, name: str, from_path: str) -> Optional[str]:
        for d in [os.path.dirname(from_path) or "."] + self.include_dirs:
            cand = os.path.join(d, name)
            if os.path.isfile(cand):
                return cand
        return None

    def has_include(self, name: str, quoted: bool, from_path: str) -> bool:
        if not quoted:
            return name.startswith("metal_") or name in _IGNORED_SYSTEM_HEADERS
        return self.find_include(name, from_path) is not None

    def include(self, ln: List[PPTok], path: str, stack: Tuple[str, ...]) -> None:
        hash_tok = ln[0]
        rest = ln[2:]
        if rest and rest[0].kind != "str" and rest[0].text != "<":
            rest = self.expander.expand(rest)  # #include MACRO
        if rest and rest[0].kind == "str" and rest[0].text.startswith('"'):
            name, quoted = rest[0].text[1:-1], True
        elif rest and rest[0].text == "<" and any(t.text == ">" for t in rest):
            k = next(i for i, t in enumerate(rest) if t.text == ">")
            name, quoted = "".join(t.text for t in rest[1:k]), False
        else:
            raise TranslateError(f"{self.where(hash_tok)}: #include expects \"file\" or <file>")
        if not quoted:
            if name.startswith("metal_") or name in _IGNORED_SYSTEM_HEADERS:
                return
            # Not an error yet: the C++ compiler stops here only if this line survives (see the module docstring).
            self.emit_line(f'#error "{c_string(self.where(hash_tok))}: #include <{c_string(name)}>: MSL kernels '
                           f'cannot use system or C++ library headers (only <metal_*>)"', hash_tok)
            return
        if os.path.isabs(name):
            # Not read: kernel files include files beside them (the trust rules, trust.py, refuse this line).
            self.emit_line(f'#error "{c_string(self.where(hash_tok))}: #include \\"{c_string(name)}\\": an '
                           f'absolute path (kernel files include files beside them)"', hash_tok)
            return
        found = self.find_include(name, path)
        if found is None:
            raise TranslateError(f'{self.where(hash_tok)}: #include "{name}": file not found next to '
                                 f"{hash_tok.file} or in {self.include_dirs}")
        real = os.path.realpath(found)
        if real in stack:
            raise TranslateError(f'{self.where(hash_tok)}: #include "{name}" includes itself')
        if real in self.once:
            return
        self.deps.append(os.path.abspath(found))
        with open(found, encoding="utf-8") as fh:
            text = fh.read()
        self.run_file(found, text, found, stack + (real,))

    # -- directives ----------------------------------------------------------------------------------------
    def directive(self, ln: List[PPTok], conds: List[_Cond], active: bool, path: str,
                  stack: Tuple[str, ...]) -> Optional[Tuple[str, int]]:
        """Handles one directive line; returns (file, line) when it is a #line directive."""
        at = self.where(ln[0])
        name = ln[1].text if len(ln) > 1 else ""
        args = ln[2:]
        if name in ("if", "ifdef", "ifndef"):
            if not active:
                conds.append(_Cond(False, True, False, False, at))
                return None
            conds.append(_Cond(False, False, True, False, at))
            self.choose(conds[-1], name, args, at, path)
            return None
        if name in ("elif", "elifdef", "elifndef", "else", "endif"):
            if not conds:
                raise TranslateError(f"{at}: #{name} without #if")
            c = conds[-1]
            if name == "endif":
                conds.pop()
            elif c.else_seen:
                raise TranslateError(f"{at}: #{name} after #else")
            elif name == "else":
                c.else_seen = True
                c.active = c.parent and not c.taken
                c.taken = c.taken or c.active
            else:
                c.active = False
                if c.parent and not c.taken:
                    self.choose(c, {"elif": "if", "elifdef": "ifdef", "elifndef": "ifndef"}[name], args, at, path)
            return None
        if not active:
            return None
        if name == "define":
            self.define(ln)
        elif name == "undef":
            if not args or args[0].kind != "id":
                raise TranslateError(f"{at}: #undef needs a macro name")
            self.macros.pop(args[0].text, None)
            self.opaque.discard(args[0].text)
        elif name == "include":
            self.include(ln, path, stack)
        elif name == "pragma":
            if args and args[0].text == "once":
                self.once.add(stack[-1] if stack else os.path.realpath(path))
            elif args and args[0].text in ("unroll", "nounroll"):
                # clang (so Metal) expands macros in a loop-unroll count: `#pragma unroll (MIN(DK8/2, 4*NSG))`
                self.emit_line("#pragma " + _spell(args[:1] + self.expander.expand(args[1:])), ln[0])
            else:
                self.emit_line("#pragma " + _spell(args), ln[0])
        elif name == "error":
            raise TranslateError(f"{at}: #error {_spell(args)}")
        elif name == "warning":
            self.warnings.append(f"{at}: #warning {_spell(args)}")
        elif name == "line":
            toks = self.expander.expand(args)
            if not toks or toks[0].kind != "num" or not toks[0].text.isdigit():
                raise TranslateError(f"{at}: #line expects a line number")
            file = toks[1].text[1:-1] if len(toks) > 1 and toks[1].kind == "str" else ln[0].file
            return file, int(toks[0].text)
        elif name != "":
            raise TranslateError(f"{at}: #{name} is not a preprocessor directive MSL has")
        return None

    def choose(self, c: _Cond, kind: str, args: List[PPTok], at: str, path: str) -> None:
        if kind in ("ifdef", "ifndef"):
            if not args or args[0].kind != "id":
                raise TranslateError(f"{at}: #{kind} needs a macro name")
            yes = self.is_defined(args[0].text) == (kind == "ifdef")
        else:
            yes = bool(evaluate(args, self.expander.expand, self.is_defined,
                                lambda n, q: self.has_include(n, q, path), at))
        c.active = yes
        c.taken = yes

    def is_defined(self, name: str) -> bool:
        return name in self.macros or name in self.opaque or name in ("__LINE__", "__FILE__", "__COUNTER__")

    def define(self, ln: List[PPTok]) -> None:
        at = self.where(ln[0])
        if len(ln) < 3 or ln[2].kind != "id":
            raise TranslateError(f"{at}: #define needs a macro name")
        name_tok = ln[2]
        name = name_tok.text
        if name == "defined":
            raise TranslateError(f"{at}: 'defined' cannot be a macro name")
        rest = ln[3:]
        params: Optional[List[str]] = None
        variadic = False
        if rest and rest[0].text == "(" and not rest[0].space:
            params = []
            k = 1
            while True:
                if k >= len(rest):
                    raise TranslateError(f"{at}: unterminated parameter list of macro '{name}'")
                t = rest[k]
                if t.text == ")":
                    k += 1
                    break
                if t.text == "...":
                    params.append("__VA_ARGS__")
                    variadic = True
                elif t.kind == "id":
                    params.append(t.text)
                elif t.text != ",":
                    raise TranslateError(f"{at}: bad parameter '{t.text}' in macro '{name}'")
                k += 1
            rest = rest[k:]
        body = [t.copy(space=t.space if i else False) for i, t in enumerate(rest)]
        if params is not None:
            index = {p: i for i, p in enumerate(params)}
            for t in body:
                if t.kind == "id" and t.text in index:
                    t.param_of = index[t.text]
        if body and (body[0].text == "##" or body[-1].text == "##"):
            raise TranslateError(f"{at}: '##' cannot start or end the definition of macro '{name}'")
        self.macros[name] = Macro(name, params, body, variadic, name_tok.file, name_tok.line)
        self.opaque.discard(name)

    # -- output --------------------------------------------------------------------------------------------
    def emit_tokens(self, toks: List[PPTok]) -> None:
        self.out.extend(("tok", t) for t in toks)

    def emit_line(self, text: str, at: PPTok) -> None:
        self.out.append(("line", at.copy(text=text)))

    def render(self) -> Tuple[List[str], List[Tuple[str, int]]]:
        """Output lines and their origins: tokens of one source line share an output line; a jump to another file
        or line is bridged by blank lines when short, else by a #line marker (so compiler messages and debug line
        tables name the .metal file); a directive line (#pragma, #error) stands alone."""
        lines: List[str] = []
        origin: List[Tuple[str, int]] = []
        cur: Optional[Tuple[str, int]] = None  # origin of the last output line
        parts: List[str] = []                  # the output line being built (empty: none open)
        prev: Optional[PPTok] = None

        def flush() -> None:
            if parts:
                lines.append("".join(parts))
                origin.append(cur)
                parts.clear()

        def move_to(where: Tuple[str, int]) -> None:
            nonlocal cur
            if cur is None or where[0] != cur[0] or not 0 < where[1] - cur[1] <= _NEAR_GAP:
                lines.append(f'#line {where[1]} "{c_string(where[0])}"')
                origin.append(where)
            else:
                for k in range(cur[1] + 1, where[1]):
                    lines.append("")
                    origin.append((where[0], k))
            cur = where

        for kind, t in self.out:
            where = (t.file, t.line)
            if kind == "line":
                flush()
                move_to(where)
                lines.append(t.text)
                origin.append(where)
                prev = None
                continue
            if not parts or where != cur:
                flush()
                move_to(where)
                prev = None
            if prev is not None and (t.space or _would_merge(prev, t)):
                parts.append(" ")
            parts.append(t.text)
            prev = t
        flush()
        return lines, origin


def _would_merge(a: PPTok, b: PPTok) -> bool:
    """Whether writing b right after a would lex differently (two names, or '-' '-' becoming '--')."""
    if a.kind in ("id", "num") and b.kind in ("id", "num", "str"):
        return True
    if a.kind == "punct" and b.kind == "punct":
        m = PUNCT_RE.match(a.text + b.text)
        return m is not None and len(m.group()) > len(a.text)
    return a.kind == "num" and b.text == "."


def _spell(toks: List[PPTok]) -> str:
    return "".join((" " if i and t.space else "") + t.text for i, t in enumerate(toks))


def preprocess(text: str, path: str, include_dirs: Sequence[str] = (), defines: Optional[Dict[str, str]] = None,
               simulator: bool = True) -> Preprocessed:
    """Preprocess MSL `text` read from `path` (used for messages and relative includes). `defines`: extra macros
    (-D NAME=VALUE), after the predefined ones (which they may override)."""
    d = dict(PREDEFINED)
    if simulator:
        d["FASIM"] = "1"
    d.update(defines or {})
    pp = _Preprocessor(include_dirs, d)
    pp.run_file(path, text, path, (os.path.realpath(path),) if os.path.isfile(path) else ())
    lines, origin = pp.render()
    return Preprocessed(lines, origin, pp.deps, pp.warnings)
