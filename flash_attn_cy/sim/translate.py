"""MSL -> C++ source pass of the Metal simulator.

The MSL subset described in ``kernels/README.md`` is C++ except for a few constructs. This pass rewrites exactly those:

* local ``#include "x.h"`` files are inlined (with ``#line`` markers), ``<metal_*>`` includes become the
  compatibility header, any other system header is an error;
* ``[[...]]`` attributes are removed after reading what they say (``buffer(n)``, ids, ``host_name``, ``kernel``);
* address-space keywords are erased (execution) or become clang address spaces 1/2/3 (strict check);
* ``threadgroup T name[N];`` becomes a reference to per-threadgroup storage from the runtime (execution) or a
  ``static`` address-space-3 variable (strict check);
* every kernel entry point (plain, or an explicit instantiation of a templated kernel) gets a generated trampoline
  that binds ``[[buffer(n)]]`` parameters to the launch's buffers and id parameters to the current thread's ids, and
  is registered under its Metal function name.

Anything else the simulator cannot run faithfully is a :class:`TranslateError` naming the construct and line.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["TranslateError", "Translation", "translate", "translate_file"]


if __package__:
    from ..errors import TranslateError  # declared with the package's other exceptions in flash_attn_cy/errors.py
else:  # the build runs this file as a script (meson custom_target), outside the package: a stand-in
    class TranslateError(ValueError):
        """See flash_attn_cy/errors.py."""


ID_ATTRIBUTES = {
    "thread_position_in_grid": "kIdThreadPosInGrid",
    "thread_position_in_threadgroup": "kIdThreadPosInTg",
    "thread_index_in_threadgroup": "kIdThreadIndexInTg",
    "threadgroup_position_in_grid": "kIdTgPosInGrid",
    "threads_per_threadgroup": "kIdThreadsPerTg",
    "threadgroups_per_grid": "kIdTgsPerGrid",
    "threads_per_grid": "kIdThreadsPerGrid",
    "simdgroup_index_in_threadgroup": "kIdSimdIndexInTg",
    "thread_index_in_simdgroup": "kIdLaneInSimd",
    "simdgroups_per_threadgroup": "kIdSimdsPerTg",
    "threads_per_simdgroup": "kIdThreadsPerSimd",
    "dispatch_simdgroups_per_threadgroup": "kIdSimdsPerTg",
    "dispatch_threads_per_threadgroup": "kIdThreadsPerTg",
}
# MSL's rules for the types of these parameters (Metal Shading Language Specification, "Attributes for kernel
# function input arguments" and the notes after it). Apple's compiler rejects a kernel that breaks them, so the
# translator does too, although the simulator itself could run any integer type.
GRID_ID_ATTRIBUTES = {"thread_position_in_grid", "threads_per_grid", "thread_position_in_threadgroup",
                      "threads_per_threadgroup", "threadgroup_position_in_grid", "dispatch_threads_per_threadgroup",
                      "threadgroups_per_grid"}  # uint/ushort, scalar or 2-/3-vector
SIMD_ID_ATTRIBUTES = {"thread_index_in_simdgroup", "threads_per_simdgroup", "simdgroup_index_in_threadgroup",
                      "simdgroups_per_threadgroup", "dispatch_simdgroups_per_threadgroup"}  # one type, uint or ushort
SAME_TYPE_ID_GROUPS = (("thread_position_in_grid", "threads_per_grid"),
                       ("thread_position_in_threadgroup", "threads_per_threadgroup",
                        "dispatch_threads_per_threadgroup"),
                       tuple(sorted(SIMD_ID_ATTRIBUTES)))
IGNORED_ATTRIBUTES = {"maybe_unused", "likely", "unlikely", "max_total_threads_per_threadgroup", "noreturn",
                      "nodiscard", "fallthrough", "visible"}
ADDRESS_SPACES = {"device": 1, "constant": 2, "threadgroup": 3, "thread": 0}
UNSUPPORTED_KEYWORDS = {
    "vertex": "vertex functions",
    "fragment": "fragment functions",
    "sampler": "samplers",
    "imageblock": "imageblocks",
}
HALF_LITERAL_RE = re.compile(r"^(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[hH]$")
SWIZZLE_RE = re.compile(r"^([xyzw]{2,4}|[rgba]{2,4})$")
VECTOR_TYPE_RE = re.compile(r"^(float|half|bfloat|int|uint|short|ushort|char|uchar|bool|long|ulong)[234]$")
TEXTURE_RE = re.compile(r"^(texture[123]d|texture\dd_array|texturecube|texture_buffer|depth2d|depthcube)\w*$")

_TOKEN_RE = re.compile(
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


@dataclasses.dataclass
class Tok:
    kind: str
    text: str
    start: int
    end: int
    line: int  # line index in the combined text (0-based)


@dataclasses.dataclass
class KernelEntry:
    name: str  # Metal function name (host_name)
    call: str  # C++ expression naming the function to call, e.g. fa_fwd<half, 64>
    params: List[Tuple[str, str]]  # (binding kind, value): ("buffer", "3") or ("id", "kIdTgPosInGrid")
    file: str
    line: int


@dataclasses.dataclass
class Translation:
    code: str
    kernels: List[KernelEntry]
    dependencies: List[str]
    warnings: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _KernelDef:
    name: str
    is_template: bool
    params: List[Tuple[str, str]]
    host_name: Optional[str]
    file: str
    line: int


class _Source:
    """Combined text of a .metal file and the local headers it includes, with a map back to original lines."""

    def __init__(self, path: str, text: str, include_dirs: Sequence[str]):
        self.include_dirs = list(include_dirs)
        self.lines: List[str] = []
        self.origin: List[Tuple[str, int]] = []
        self.deps: List[str] = []
        self._once: set = set()
        self._add_file(path, text, stack=())

    def where(self, line_index: int) -> str:
        f, ln = self.origin[min(line_index, len(self.origin) - 1)]
        return f"{f}:{ln}"

    def _emit(self, text: str, origin: Tuple[str, int]) -> None:
        self.lines.append(text)
        self.origin.append(origin)

    def _add_file(self, path: str, text: str, stack: tuple) -> None:
        display = path
        raw = text.split("\n")
        self._emit(f'#line 1 "{_c_string(display)}"', (display, 1))
        # keep line numbering: joined continuation lines are handled by the C preprocessor itself
        if re.search(r"^\s*#\s*pragma\s+once\b", text, re.M):
            key = os.path.realpath(path)
            if key in self._once:
                return
            self._once.add(key)
        for i, line in enumerate(raw):
            m = re.match(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', line)
            if not m:
                if re.match(r"^\s*#\s*pragma\s+once\b", line):
                    line = ""
                self._emit(line, (display, i + 1))
                continue
            kind, name = m.group(1), m.group(2).strip()
            if kind == "<":
                if name.startswith("metal_") or name == "simd/simd.h":
                    self._emit("", (display, i + 1))
                    continue
                # Not an error yet: the include may sit in a branch for host compilers (#ifndef __METAL_VERSION__)
                # that the preprocessor skips; if it is reached, compilation stops with this message.
                self._emit(f'#error "{_c_string(display)}:{i + 1}: #include <{_c_string(name)}>: MSL kernels cannot '
                           f'use system or C++ library headers (only <metal_*>)"', (display, i + 1))
                continue
            found = None
            for d in [os.path.dirname(path) or "."] + self.include_dirs:
                cand = os.path.join(d, name)
                if os.path.isfile(cand):
                    found = cand
                    break
            if found is None:
                raise TranslateError(f'{display}:{i + 1}: #include "{name}": file not found next to {display} '
                                     f"or in {self.include_dirs}")
            if os.path.realpath(found) in stack:
                raise TranslateError(f'{display}:{i + 1}: #include "{name}" includes itself')
            self.deps.append(os.path.abspath(found))
            with open(found, encoding="utf-8") as fh:
                sub = fh.read()
            self._add_file(found, sub, stack + (os.path.realpath(found),))
            self._emit(f'#line {i + 2} "{_c_string(display)}"', (display, i + 1))


def _c_string(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _tokenize(text: str) -> List[Tok]:
    toks: List[Tok] = []
    pos, line, n = 0, 0, len(text)
    at_line_start = True
    while pos < n:
        if at_line_start:
            m = re.compile(r"[ \t]*#").match(text, pos)
            if m:  # preprocessor directive, with continuations
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
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise TranslateError(f"unexpected character {text[pos]!r}")
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


def _match(toks: List[Tok], i: int, open_: str, close: str) -> int:
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


def _match_angle(toks: List[Tok], i: int) -> int:
    depth = 0
    for j in range(i, len(toks)):
        t = toks[j].text
        if t in ("<",):
            depth += 1
        elif t == ">":
            depth -= 1
        elif t == ">>":
            depth -= 2
        if depth <= 0:
            return j
    raise TranslateError("unbalanced '<'")


def _split_top(toks: List[Tok], lo: int, hi: int) -> List[Tuple[int, int]]:
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


class _Translator:
    def __init__(self, src: _Source, mode: str, header: str, strict: bool = True):
        self.src = src
        self.strict = strict
        self.warnings: List[str] = []
        self.mode = mode  # "exec" or "check"
        self.header = header
        self.text = "\n".join(src.lines)
        self.toks = _tokenize(self.text)
        self.edits: List[Tuple[int, int, str]] = []
        self.attrs: Dict[int, Tuple[int, List[str]]] = {}  # token index of first '[' -> (index of last ']', items)
        self.attr_owner: List[Optional[int]] = [None] * len(self.toks)
        self.defs: Dict[str, _KernelDef] = {}
        self.entries: List[KernelEntry] = []
        self.tg_count = 0

    def err(self, tok_index: int, msg: str) -> TranslateError:
        t = self.toks[min(tok_index, len(self.toks) - 1)]
        return TranslateError(f"{self.src.where(t.line)}: {msg}")

    # -- attributes -----------------------------------------------------------------------------------------
    def scan_attributes(self) -> None:
        toks = self.toks
        i = 0
        while i < len(toks) - 1:
            if toks[i].text == "[" and toks[i + 1].text == "[":
                close = _match(toks, i, "[", "]")
                if close + 1 >= len(toks) or toks[close - 1].text != "]":
                    raise self.err(i, "malformed attribute")
                inner_lo, inner_hi = i + 2, close - 1
                items = []
                for a, b in _split_top(toks, inner_lo, inner_hi):
                    items.append(" ".join(t.text for t in toks[a:b]))
                self.attrs[i] = (close, items)
                for j in range(i, close + 1):
                    self.attr_owner[j] = i
                self.edits.append((toks[i].start, toks[close].end, ""))
                i = close + 1
            else:
                i += 1

    def attr_items_between(self, lo: int, hi: int) -> List[Tuple[int, str]]:
        out = []
        for k, (close, items) in self.attrs.items():
            if lo <= k < hi:
                out.extend((k, it) for it in items)
        return sorted(out)

    # -- main pass ------------------------------------------------------------------------------------------
    def run(self) -> Translation:
        self.scan_attributes()
        toks = self.toks
        for i, t in enumerate(toks):
            if self.attr_owner[i] is not None:
                continue
            if t.kind == "pp":
                self.check_directive(i)
                continue
            if (self.mode == "exec" and t.kind == "id" and SWIZZLE_RE.match(t.text) and i > 0
                    and toks[i - 1].text in (".", "->")):
                self.swizzle(i)
                continue
            if t.kind == "num" and HALF_LITERAL_RE.match(t.text):
                self.edits.append((t.start, t.end, f"half({t.text[:-1]}f)"))
                continue
            if t.kind != "id":
                continue
            if (self.mode == "check" and VECTOR_TYPE_RE.match(t.text) and i + 1 < len(toks)
                    and toks[i + 1].text == "(" and (i == 0 or toks[i - 1].text not in (".", "->", "::"))):
                self.edits.append((t.start, t.end, f"::metal::fasim_make<{t.text}>"))
                continue
            if t.text in UNSUPPORTED_KEYWORDS:
                raise self.err(i, f"{UNSUPPORTED_KEYWORDS[t.text]} ('{t.text}') are not supported by the simulator")
            if TEXTURE_RE.match(t.text) and i + 1 < len(toks) and toks[i + 1].text == "<":
                raise self.err(i, f"textures ('{t.text}') are not supported by the simulator")
            if (self.mode == "exec" and t.text == "reinterpret_cast" and i + 1 < len(toks) and toks[i + 1].text == "<"
                    and (i == 0 or toks[i - 1].text not in (".", "->", "::"))):
                # checked: a pointer cast to a type its address is not aligned for is a fault (fasim_rt.h CastSite)
                self.edits.append((t.start, t.end, "::fasim::CastSite(__FILE__, __LINE__).as"))
                continue
            if t.text == "kernel":
                self.edits.append((t.start, t.end, ""))
            elif t.text in ADDRESS_SPACES:
                self.address_space(i)
        # kernels: the 'kernel' keyword or a [[kernel]] attribute
        for i, t in enumerate(toks):
            if self.attr_owner[i] is None and t.kind == "id" and t.text == "kernel":
                self.kernel_at(i)
        for k, (close, items) in sorted(self.attrs.items()):
            for it in items:
                name = it.split("(")[0].strip()
                if name == "kernel":
                    self.kernel_at(k)
        for k, (close, items) in sorted(self.attrs.items()):
            for it in items:
                self.check_attribute(k, it)
        return self.emit()

    def swizzle(self, i: int) -> None:
        """`v.xy` -> `v.template fasim_swizzle<0, 1>()`; as an assignment target the writing proxy instead."""
        t = self.toks[i]
        idx = ", ".join(str("xyzw".index(c) if c in "xyzw" else "rgba".index(c)) for c in t.text)
        nxt = self.toks[i + 1].text if i + 1 < len(self.toks) else ""
        if nxt in ("=", "+=", "-=", "*=", "/="):
            if len(set(t.text)) != len(t.text):
                raise self.err(i, f"swizzle '.{t.text}' repeats a component and cannot be assigned to")
            repl = f"template fasim_swizzle_ref<{idx}>()"
        else:
            repl = f"template fasim_swizzle<{idx}>()"
        self.edits.append((t.start, t.end, repl))

    def check_directive(self, i: int) -> None:
        text = re.sub(r"//[^\n]*|/\*.*?\*/", " ", self.toks[i].text, flags=re.S)  # comments don't count
        if re.match(r"\s*#\s*define\b", text) and re.search(r"\bthreadgroup\b", text):
            raise self.err(i, "'threadgroup' inside a #define is not supported by the simulator's translator "
                              "(write the declaration out)")
        if re.match(r"\s*#\s*define\b", text) and re.search(r"\[\[\s*(kernel|host_name)\b|\bkernel\s+void\b", text):
            e = self.err(i, "kernel declarations or instantiations inside a #define are invisible to the "
                            "simulator's translator (it reads the source before the preprocessor): write them out")
            if self.strict:
                raise e
            self.warnings.append(str(e))
        if re.match(r"\s*#\s*define\b", text):
            body = re.sub(r"\[\[.*?\]\]", " ", text)  # MSL attributes mean nothing to the C++ compiler
            for word, space in ADDRESS_SPACES.items():
                body = re.sub(rf"\b{word}\b", self.space_text(space), body)
            if body != text:
                self.edits.append((self.toks[i].start, self.toks[i].end, body))

    def space_text(self, space: int) -> str:
        if self.mode == "exec" or space == 0:
            return ""
        return f"__attribute__((address_space({space})))"

    def check_attribute(self, k: int, item: str) -> None:
        name = item.split("(")[0].strip()
        if name in ("kernel", "host_name", "buffer") or name in ID_ATTRIBUTES or name in IGNORED_ATTRIBUTES:
            return
        if name.startswith("clang ::") or name.startswith("gnu ::"):
            return
        what = {
            "threadgroup": "[[threadgroup(n)]] parameters (dynamic threadgroup memory): declare the array in the kernel",
            "function_constant": "function constants: specialise with template parameters",
            "stage_in": "[[stage_in]]",
            "texture": "textures",
            "sampler": "samplers",
        }.get(name, f"the attribute [[{item}]]")
        raise self.err(k, f"{what} not supported by the simulator")

    def address_space(self, i: int) -> None:
        toks = self.toks
        t = toks[i]
        space = ADDRESS_SPACES[t.text]
        if t.text == "threadgroup":
            prev = self.prev_sig(i)
            if prev is not None and toks[prev].text in ("{", "}", ";", ":") and self.in_function(i):
                if self.threadgroup_decl(i):
                    return
        self.edits.append((t.start, t.end, self.space_text(space)))

    def prev_sig(self, i: int) -> Optional[int]:
        j = i - 1
        while j >= 0 and (self.attr_owner[j] is not None or toks_is_pp(self.toks[j])):
            j -= 1
        return j if j >= 0 else None

    def in_function(self, i: int) -> bool:
        depth = 0
        for j in range(i - 1, -1, -1):
            tx = self.toks[j].text
            if tx == "}":
                depth += 1
            elif tx == "{":
                if depth == 0:
                    return self.brace_is_body(j)
                depth -= 1
        return False

    def brace_is_body(self, j: int) -> bool:
        """True if the '{' at j opens a function body or a block inside one (not a namespace/struct at scope)."""
        prev = self.prev_sig(j)
        if prev is None:
            return False
        tx = self.toks[prev].text
        if tx in (")", "const", "else", "do", "{", "}", ";", ":", "noexcept", "mutable"):
            if tx in ("{", "}", ";", ":"):
                return self.in_function(j)
            return True
        return False

    def threadgroup_decl(self, i: int) -> bool:
        toks = self.toks
        j = i + 1
        while j < len(toks) and toks[j].text != ";":
            if toks[j].text in ("(", "[", "{"):
                j = _match(toks, j, toks[j].text, {"(": ")", "[": "]", "{": "}"}[toks[j].text])
            j += 1
        stmt = [k for k in range(i + 1, j) if self.attr_owner[k] is None]
        depth = 0
        first_bracket = None
        for pos, k in enumerate(stmt):
            tx = toks[k].text
            if tx in ("<", "(", "["):
                if tx == "[" and depth == 0 and first_bracket is None:
                    first_bracket = pos
                depth += 1
            elif tx in (">", ")", "]"):
                depth -= 1
            elif tx == ">>":
                depth -= 2
            elif depth == 0 and tx in ("*", "&", "&&"):
                return False  # a pointer/reference to threadgroup memory, not storage
            elif depth == 0 and tx == "=":
                raise self.err(i, "threadgroup variables cannot have an initializer (MSL forbids it)")
            elif depth == 0 and tx == ",":
                raise self.err(i, "declare one threadgroup variable per statement")
            elif depth == 0 and tx == "(":
                return False
        name_pos = (first_bracket if first_bracket is not None else len(stmt)) - 1
        if name_pos < 1 or toks[stmt[name_pos]].kind != "id":
            raise self.err(i, "cannot parse this threadgroup declaration (expected 'threadgroup T name[N];')")
        name = toks[stmt[name_pos]].text
        type_toks = [toks[k].text for k in stmt[:name_pos] if toks[k].text not in ADDRESS_SPACES]
        ttype = " ".join(type_toks)
        dims = "".join(toks[k].text if toks[k].kind != "id" else " " + toks[k].text + " "
                       for k in stmt[name_pos + 1:])
        fname, fline = self.src.origin[toks[i].line]
        self.tg_count += 1
        n = self.tg_count
        if self.mode == "check":
            # A reference to address-space-3 storage (not a static variable: clang cannot construct class types,
            # atomics or user structs, in an address space).
            q = f"{self.space_text(3)} {ttype}"
            repl = (f"{q} (&{name}){dims} = *::metal::fasim_tg_storage<{q}{dims}>()" if dims
                    else f"{q} &{name} = *::metal::fasim_tg_storage<{q}>()")
        else:
            site = f"fasim_tg_site_{n}"
            if dims:
                repl = (f'static const ::fasim::TgSite {site}{{"{name}", "{_c_string(fname)}", {fline}}}; '
                        f"{ttype} (&{name}){dims} = *static_cast<{ttype} (*){dims}>(::fasim::tg_alloc(&{site}, "
                        f"sizeof({ttype}{dims}), alignof({ttype})))")
            else:
                repl = (f'static const ::fasim::TgSite {site}{{"{name}", "{_c_string(fname)}", {fline}}}; '
                        f"{ttype} &{name} = *static_cast<{ttype} *>(::fasim::tg_alloc(&{site}, sizeof({ttype}), "
                        f"alignof({ttype})))")
        self.edits.append((toks[i].start, toks[j - 1].end if j - 1 > i else toks[i].end, repl))
        for k in range(i + 1, j):  # the replacement covers these tokens: no second address space among them
            if toks[k].text in ADDRESS_SPACES:
                raise self.err(i, "more than one address space in a threadgroup declaration")
        return True

    # -- kernels --------------------------------------------------------------------------------------------
    def kernel_at(self, i: int) -> None:
        """i: index of the 'kernel' keyword or of the '[' opening a [[kernel]] attribute."""
        toks = self.toks
        # backwards: explicit instantiation ('template' directly before) or template definition
        p = self.prev_sig(i)
        while p is not None and toks[p].text in ("kernel", "inline", "static"):
            p = self.prev_sig(p)
        start = 0 if p is None else p + 1
        explicit_inst = p is not None and toks[p].text == "template"
        is_template = False
        if p is not None and toks[p].text == ">":
            # template <...> before: find the matching 'template <'
            depth = 0
            for q in range(p, -1, -1):
                if toks[q].text == ">":
                    depth += 1
                elif toks[q].text == ">>":
                    depth += 2
                elif toks[q].text == "<":
                    depth -= 1
                    if depth == 0:
                        is_template = q > 0 and toks[q - 1].text == "template"
                        break
        # gather attributes around the declaration
        host_name = None
        j = start
        decl_attrs = []
        while j < len(toks) and (self.attr_owner[j] is not None or toks[j].kind == "pp"
                                 or toks[j].text in ("kernel", "inline", "static")):
            if self.attr_owner[j] == j:
                decl_attrs.extend(self.attrs[j][1])
                j = self.attrs[j][0] + 1
            else:
                j += 1
        if j in self.seen_kernels:
            return
        self.seen_kernels.add(j)
        for a in decl_attrs:
            m = re.match(r'host_name\s*\(\s*"(.*)"\s*\)', a)
            if m:
                host_name = m.group(1)
        # return type and name
        if toks[j].text == "decltype":
            close = _match(toks, j + 1, "(", ")")
            k = close + 1
        else:
            if toks[j].text != "void":
                raise self.err(j, "kernel functions must return void")
            k = j + 1
        if toks[k].kind != "id":
            raise self.err(k, "cannot parse the kernel declaration (expected a function name)")
        name = toks[k].text
        fname, fline = self.src.origin[toks[k].line]
        k += 1
        targs = ""
        if k < len(toks) and toks[k].text == "<":
            close = _match_angle(toks, k)
            targs = self.text[toks[k].start:toks[close].end]
            k = close + 1
        if explicit_inst:
            if not targs:
                raise self.err(k, "explicit kernel instantiation without template arguments")
            self.pending_inst.append((host_name or name, name, targs, fname, fline, k))
            return
        if toks[k].text != "(":
            raise self.err(k, f"cannot parse the parameter list of kernel '{name}'")
        close = _match(toks, k, "(", ")")
        params = []
        declared_ids = {}  # attribute -> (type, token index)
        for a, b in _split_top(toks, k + 1, close):
            items = [it for _, it in self.attr_items_between(a, b)]
            binds = []
            id_types = []
            for it in items:
                nm = it.split("(")[0].strip()
                if nm == "buffer":
                    m = re.match(r"buffer\s*\(\s*(\d+)\s*\)", it)
                    if not m or int(m.group(1)) >= 31:
                        raise self.err(a, f"bad buffer index in [[{it}]] (expected 0..30)")
                    binds.append(("buffer", m.group(1)))
                elif nm in ID_ATTRIBUTES:
                    binds.append(("id", ID_ATTRIBUTES[nm]))
                    id_types.append((nm, a))
                elif nm in IGNORED_ATTRIBUTES:
                    continue
                else:
                    self.check_attribute(a, it)
            words = [toks[q].text for q in range(a, b) if self.attr_owner[q] is None]
            if not binds and ("device" in words or "constant" in words) and ("*" in words or "&" in words):
                # No [[buffer(n)]]: Metal numbers such buffer arguments itself, in order (Apple's own samples do
                # this); they take the lowest indices no explicit [[buffer(n)]] of this kernel uses.
                binds.append(("buffer", None))
            if len(binds) != 1:
                raise self.err(a, f"kernel '{name}': parameter '{' '.join(words)}' needs exactly one [[buffer(n)]] "
                                  "or id attribute")
            params.append(binds[0])
            for nm, at in id_types:
                declared_ids[nm] = (" ".join(w for w in words[:-1] if w != "const"), at)
        self.check_id_types(name, declared_ids)
        used = {int(v) for kind, v in params if kind == "buffer" and v is not None}
        free = (i for i in range(31) if i not in used)
        params = [("buffer", str(next(free))) if (kind == "buffer" and v is None) else (kind, v)
                  for kind, v in params]
        d = _KernelDef(name, is_template, params, host_name, fname, fline)
        self.defs[name] = d
        if not is_template:
            self.entries.append(KernelEntry(host_name or name, name, params, fname, fline))

    def check_id_types(self, kernel: str, ids: dict) -> None:
        """MSL's type rules for the thread/threadgroup/SIMD-group position parameters of one kernel."""
        def fail(attr: str, msg: str) -> TranslateError:
            return self.err(ids[attr][1], f"kernel '{kernel}': [[{attr}]] {msg}")
        for attr, (typ, _) in ids.items():
            ok = re.fullmatch(r"u(int|short)[23]?" if attr in GRID_ID_ATTRIBUTES else r"u(int|short)", typ)
            if not ok:
                allowed = "uint, ushort or their 2-/3-vectors" if attr in GRID_ID_ATTRIBUTES else "uint or ushort"
                raise fail(attr, f"is declared '{typ}'; MSL allows {allowed} only")
        widths = {attr: typ[-1] for attr, (typ, _) in ids.items() if attr in GRID_ID_ATTRIBUTES and typ[-1] in "23"}
        if len(set(widths.values())) > 1:
            raise fail(sorted(widths)[0], "and the other vector-typed grid/threadgroup positions and sizes must have "
                       f"the same number of components (MSL): {', '.join(f'{a}: {ids[a][0]}' for a in sorted(widths))}")
        for group in SAME_TYPE_ID_GROUPS:
            present = [attr for attr in group if attr in ids]
            if len({ids[attr][0] for attr in present}) > 1:
                raise fail(present[0], "must be declared with the same type as "
                           f"{', '.join(f'[[{a}]] ({ids[a][0]})' for a in present[1:])} (MSL)")
        tpos = ids.get("thread_position_in_threadgroup")
        tidx = ids.get("thread_index_in_threadgroup")
        if tpos and tidx and tpos[0].startswith("uint") and tidx[0] != "uint":
            raise fail("thread_index_in_threadgroup", "must be uint when [[thread_position_in_threadgroup]] is "
                       f"{tpos[0]} (MSL)")

    def emit(self) -> Translation:
        for host, name, targs, fname, fline, k in self.pending_inst:
            d = self.defs.get(name)
            if d is None:
                raise self.err(k, f"explicit instantiation of kernel '{name}' before (or without) its definition")
            self.entries.append(KernelEntry(host, name + targs, d.params, fname, fline))
        names = [e.name for e in self.entries]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise TranslateError(f"kernel name(s) registered twice: {sorted(dup)}")
        text = self.text
        for a, b, r in sorted(self.edits, key=lambda e: (e[0], -e[1]), reverse=True):
            text = text[:a] + r + text[b:]
        out = []
        out.append("// Generated by flash_attn_cy.sim.translate from the MSL source below; do not edit.")
        out.append("#define __METAL_VERSION__ 310")
        if self.mode == "exec":
            out.append("#define FASIM 1")
            out.append(f'#include "{self.header}"')
            out.append("#if defined(__GNUC__)")  # MSL kernels routinely leave id parameters unused
            out.append('#pragma GCC diagnostic ignored "-Wunused-parameter"')
            out.append('#pragma GCC diagnostic ignored "-Wunused-variable"')
            out.append('#pragma GCC diagnostic ignored "-Wunknown-pragmas"')
            out.append('#pragma GCC diagnostic ignored "-Wunused-function"')  # the unit is in an anonymous namespace
            out.append("#endif")
            out.append("namespace {")
            out.append(text)
            out.append('#line 1 "<simulator trampolines>"')
            for n, e in enumerate(self.entries):
                args = []
                mask = 0
                for kind, v in e.params:
                    if kind == "buffer":
                        args.append(f"::fasim::BufArg{{{v}}}")
                        mask |= 1 << int(v)
                    else:
                        args.append(f"::fasim::IdArg{{::fasim::{v}}}")
                out.append(f"void fasim_entry_{n}(::fasim::ThreadCtx &) {{ {e.call}({', '.join(args)}); }}")
                out.append(f'::fasim::KernelInfo fasim_info_{n}{{"{_c_string(e.name)}", &fasim_entry_{n}, '
                           f'"{_c_string(e.file)}", {e.line}, {mask}u, nullptr}};')
                out.append(f"::fasim::KernelRegistrar fasim_registrar_{n}{{&fasim_info_{n}}};")
            out.append("}  // namespace")
        else:
            out.append(f'#include "{self.header}"')
            out.append("#define double __msl_has_no_double")
            out.append("#define new __msl_has_no_new")
            out.append("#define delete __msl_has_no_delete")
            out.append("#define virtual __msl_has_no_virtual_functions")
            out.append("#define printf __msl_has_no_printf")
            out.append("#define std __msl_has_no_standard_library")
            out.append("#define malloc __msl_has_no_malloc")
            out.append(text)
        return Translation("\n".join(out) + "\n", self.entries, self.src.deps, self.warnings)


def toks_is_pp(t: Tok) -> bool:
    return t.kind == "pp"


def translate(source: str, path: str = "<source>.metal", include_dirs: Sequence[str] = (), mode: str = "exec",
              header: str = "metal_stdlib", strict: bool = True) -> Translation:
    """Translate MSL ``source`` (read from ``path``, used for messages and relative includes) to C++.

    ``mode`` is ``"exec"`` (code for the simulator runtime) or ``"check"`` (code for the strict clang pass).
    ``strict=False`` turns kernels hidden in macros into warnings (the build keeps going; the kernel is missing).
    """
    if mode not in ("exec", "check"):
        raise ValueError(f"mode must be 'exec' or 'check', got {mode!r}")
    src = _Source(path, source, include_dirs)
    tr = _Translator(src, mode, header, strict)
    tr.seen_kernels = set()
    tr.pending_inst = []
    return tr.run()


def translate_file(path: str, include_dirs: Sequence[str] = (), mode: str = "exec",
                   header: str = "metal_stdlib", strict: bool = True) -> Translation:
    """Like :func:`translate` for a file on disk."""
    with open(path, encoding="utf-8") as fh:
        return translate(fh.read(), path, include_dirs, mode, header, strict)


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return
    except OSError:
        pass
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build-time entry (kernels/meson.build runs this file as a script; it needs only the standard library)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description="Translate an MSL file to C++ for the Metal simulator")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--depfile")
    p.add_argument("--header", default="metal_stdlib", help="include path of the compatibility header")
    p.add_argument("-I", "--include", action="append", default=[])
    a = p.parse_args(argv)
    try:
        tr = translate_file(a.input, a.include, "exec", a.header, strict=False)
    except (TranslateError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for w in tr.warnings:
        print(f"warning: {w}", file=sys.stderr)
    _write_if_changed(a.output, tr.code)
    if a.depfile:
        deps = " ".join(d.replace(" ", "\\ ") for d in [os.path.abspath(a.input)] + tr.dependencies)
        _write_if_changed(a.depfile, f"{a.output}: {deps}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
