"""The translator's main pass over preprocessed MSL: reads and removes `[[...]]` attributes, erases address spaces
(or maps them to clang address spaces for the strict check), turns threadgroup declarations into per-threadgroup
storage, rewrites swizzles and half literals, and dispatches kernels (kernels.py) and function constants
(function_constants.py). Anything the simulator cannot run faithfully is a TranslateError naming the construct and
line."""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from .errors import TranslateError
from .function_constants import FunctionConstantPass
from .kernels import ID_ATTRIBUTES, IGNORED_ATTRIBUTES, KernelPass
from .lexer import Tok, c_string, match, match_angle, split_top, tokenize
from .preprocess import Preprocessed
from .conditionals import ConditionalPass
from .designators import DesignatorPass
from .space_overloads import SpaceOverloadPass

__all__ = ["Translator", "ADDRESS_SPACES"]

ADDRESS_SPACES = {"device": 1, "constant": 2, "threadgroup": 3, "thread": 0}
UNSUPPORTED_KEYWORDS = {
    "vertex": "vertex functions",
    "fragment": "fragment functions",
    "sampler": "samplers",
    "imageblock": "imageblocks",
}
# Attributes the translator reads elsewhere or that change nothing the simulator models.
KNOWN_ATTRIBUTES = {"kernel", "host_name", "buffer", "function_constant", "max_total_threads_per_threadgroup",
                    "threadgroup"}
HALF_LITERAL_RE = re.compile(r"^(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[hH]$")
SWIZZLE_RE = re.compile(r"^([xyzw]{2,4}|[rgba]{2,4})$")
VECTOR_TYPE_RE = re.compile(r"^(float|half|bfloat|int|uint|short|ushort|char|uchar|bool|long|ulong)[234]$")
TEXTURE_RE = re.compile(r"^(texture[123]d|texture\dd_array|texturecube|texture_buffer|depth2d|depthcube)\w*$")


class Translator(KernelPass, FunctionConstantPass, SpaceOverloadPass, DesignatorPass, ConditionalPass):
    def __init__(self, src: Preprocessed, mode: str):
        self.src = src
        self.mode = mode  # "exec" (code for the simulator runtime) or "check" (code for the strict clang pass)
        self.warnings: List[str] = list(src.warnings)
        self.text = "\n".join(src.lines)
        self.toks = tokenize(self.text, src.where)
        self.edits: List[Tuple[int, int, str]] = []
        self.attrs: Dict[int, Tuple[int, List[str]]] = {}  # token index of first '[' -> (index of last ']', items)
        self.attr_owner: List[Optional[int]] = [None] * len(self.toks)
        self.tg_count = 0
        self.only: Optional[str] = None  # translate(..., kernel=NAME): register that kernel only (emit.py)
        self.kernels_init()
        self.fc_init()

    def err(self, tok_index: int, msg: str) -> TranslateError:
        t = self.toks[min(tok_index, len(self.toks) - 1)]
        return TranslateError(f"{self.src.where(t.line)}: {msg}")

    def replace_range(self, a: int, b: int, text: str) -> None:
        """Replace text[a:b], dropping earlier edits inside it (removed attributes)."""
        self.edits = [e for e in self.edits if not (a <= e[0] and e[1] <= b and e[0] < b)]
        self.edits.append((a, b, text))

    # -- attributes -----------------------------------------------------------------------------------------
    def scan_attributes(self) -> None:
        toks = self.toks
        i = 0
        while i < len(toks) - 1:
            if toks[i].text == "[" and toks[i + 1].text == "[":
                close = match(toks, i, "[", "]")
                if close + 1 >= len(toks) or toks[close - 1].text != "]":
                    raise self.err(i, "malformed attribute")
                items = [" ".join(t.text for t in toks[a:b]) for a, b in split_top(toks, i + 2, close - 1)]
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

    def check_attribute(self, k: int, item: str) -> None:
        name = item.split("(")[0].strip()
        if name in KNOWN_ATTRIBUTES or name in ID_ATTRIBUTES or name in IGNORED_ATTRIBUTES:
            return
        if name.startswith("clang ::") or name.startswith("gnu ::"):
            return
        what = {
            "stage_in": "[[stage_in]]",
            "texture": "textures",
            "sampler": "samplers",
        }.get(name, f"the attribute [[{item}]]")
        raise self.err(k, f"{what} not supported by the simulator")

    # -- main pass ------------------------------------------------------------------------------------------
    def run(self):
        self.scan_attributes()
        toks = self.toks
        for i, t in enumerate(toks):
            if self.attr_owner[i] is not None or t.kind == "pp" or i in self.fc_consumed:
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
            if t.text in self.fcs or t.text in self.derived:
                self.fc_use(i)
                continue
            if t.text == "is_function_constant_defined":
                self.fc_defined_call(i)
                continue
            if (self.mode == "check" and VECTOR_TYPE_RE.match(t.text) and i + 1 < len(toks)
                    and toks[i + 1].text == "(" and (i == 0 or toks[i - 1].text not in (".", "->", "::", "operator"))):
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
            if t.text == "namespace" and self.mode == "exec" and i + 1 < len(toks) and toks[i + 1].text == "metal":
                self.reopen_metal(i)
            if t.text == "kernel":
                self.edits.append((t.start, t.end, ""))
            elif t.text == "constant" and not self.in_function(i) and self.fc_declaration(i):
                continue
            elif t.text in ADDRESS_SPACES:
                self.address_space(i)
        # kernels: the 'kernel' keyword or a [[kernel]] attribute
        for i, t in enumerate(toks):
            if self.attr_owner[i] is None and t.kind == "id" and t.text == "kernel":
                self.kernel_at(i)
        for k, (close, items) in sorted(self.attrs.items()):
            if any(it.split("(")[0].strip() == "kernel" for it in items):
                self.kernel_at(k)
        for k, (close, items) in sorted(self.attrs.items()):
            for it in items:
                self.check_attribute(k, it)
        self.space_overloads()
        if self.mode == "exec":
            self.range_designators()
            self.conditionals()
        self.instantiate()
        from .emit import emit  # emit.py builds the output from this pass's results
        return emit(self)

    def reopen_metal(self, i: int) -> None:
        """`namespace metal { ... }` at file scope (kernels add overloads and specialisations to MSL's namespace): the
        simulator wraps a file in an anonymous namespace (emit.py), inside which this would open a namespace of
        its own; close the anonymous one around the block so that the additions reach ::metal."""
        toks = self.toks
        if any(toks[j].text == "{" for j in range(i)) and self.brace_depth(i) != 0:
            return  # inside another namespace or block: left as written
        k = i + 1
        while k < len(toks) and toks[k].text != "{":
            if toks[k].text == ";":
                return  # `namespace metal = ...;` or similar: not a block
            k += 1
        if k >= len(toks):
            return
        close = match(toks, k, "{", "}")
        self.edits.append((toks[i].start, toks[i].start, "}  /* to ::metal */ "))
        self.edits.append((toks[close].end, toks[close].end, " namespace {"))

    def brace_depth(self, i: int) -> int:
        depth = 0
        for j in range(i):
            tx = self.toks[j].text
            if tx == "{":
                depth += 1
            elif tx == "}":
                depth -= 1
        return depth

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

    def space_text(self, space: int) -> str:
        if self.mode == "exec" or space == 0:
            return ""
        return f"__attribute__((address_space({space})))"

    def constant_is_const(self, i: int) -> bool:
        """Whether the `constant` at toks[i] must also say `const`: the constant address space is
        read-only, so a `constant T *` may point at a program-scope constant (llama.cpp passes its constexpr tables
        to `constant float *` parameters); not where the declaration already says const (`const constant T &`)."""
        toks = self.toks
        j = i - 1
        while j >= 0 and (toks[j].kind == "id" or toks[j].text == "::") and toks[j].text != "const":
            j -= 1
        if j >= 0 and toks[j].text == "const":
            return False
        k = i + 1
        while k < len(toks) and (toks[k].kind == "id" or toks[k].text in ("::", "<")):
            if toks[k].text == "const":
                return False
            k = match_angle(toks, k) + 1 if toks[k].text == "<" else k + 1
        return True

    def address_space(self, i: int) -> None:
        toks = self.toks
        t = toks[i]
        space = ADDRESS_SPACES[t.text]
        if t.text == "threadgroup":
            prev = self.prev_sig(i)
            if prev is not None and toks[prev].text in ("{", "}", ";", ":") and self.in_function(i):
                if self.threadgroup_decl(i):
                    return
        if t.text == "constant" and self.constant_is_const(i):
            self.edits.append((t.start, t.end, ("const " + self.space_text(space)).strip()))
            return
        self.edits.append((t.start, t.end, self.space_text(space)))

    def prev_sig(self, i: int) -> Optional[int]:
        j = i - 1
        while j >= 0 and (self.attr_owner[j] is not None or self.toks[j].kind == "pp"):
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
                j = match(toks, j, toks[j].text, {"(": ")", "[": "]", "{": "}"}[toks[j].text])
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
                repl = (f'static const ::fasim::TgSite {site}{{"{name}", "{c_string(fname)}", {fline}}}; '
                        f"{ttype} (&{name}){dims} = *static_cast<{ttype} (*){dims}>(::fasim::tg_alloc(&{site}, "
                        f"sizeof({ttype}{dims}), alignof({ttype})))")
            else:
                repl = (f'static const ::fasim::TgSite {site}{{"{name}", "{c_string(fname)}", {fline}}}; '
                        f"{ttype} &{name} = *static_cast<{ttype} *>(::fasim::tg_alloc(&{site}, sizeof({ttype}), "
                        f"alignof({ttype})))")
        self.edits.append((toks[i].start, toks[j - 1].end if j - 1 > i else toks[i].end, repl))
        for k in range(i + 1, j):  # the replacement covers these tokens: no second address space among them
            if toks[k].text in ADDRESS_SPACES:
                raise self.err(i, "more than one address space in a threadgroup declaration")
        return True
