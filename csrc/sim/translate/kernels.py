"""Kernel entry points: definitions (`kernel void f(...)`, `[[kernel]]`, templates), explicit instantiations
registered under their `[[host_name("...")]]`, the binding of every parameter (buffer index or thread id), MSL's type
rules for the id parameters, optional arguments gated by function constants, and
`[[max_total_threads_per_threadgroup(N)]]`; `[[threadgroup(n)]]` arguments (dynamic threadgroup memory)."""

from __future__ import annotations

import re
from typing import Dict, List, Optional

from .errors import TranslateError
from .lexer import match, match_angle, split_top
from .model import KernelDef, KernelEntry

__all__ = ["KernelPass", "ID_ATTRIBUTES", "IGNORED_ATTRIBUTES"]

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
IGNORED_ATTRIBUTES = {"maybe_unused", "likely", "unlikely", "noreturn", "nodiscard", "fallthrough", "visible"}
_MAX_THREADS_RE = re.compile(r"max_total_threads_per_threadgroup\s*\((.*)\)\s*$", re.S)
_SPECIFIERS = ("kernel", "inline", "static", "METAL_FUNC")
_STRING_RE = re.compile(r'"((?:\\.|[^"\\])*)"')


class KernelPass:
    """Mixin of the translator (translator.py)."""

    def kernels_init(self) -> None:
        self.defs: Dict[str, KernelDef] = {}
        self.entries: List[KernelEntry] = []
        self.pending_inst: list = []  # (host name, kernel name, template args, file, line, token index, `template`)
        self.seen_kernels: set = set()

    def kernel_at(self, i: int) -> None:
        """i: index of the 'kernel' keyword or of the '[' opening a [[kernel]] attribute."""
        toks = self.toks
        # backwards: explicit instantiation ('template' directly before) or template definition
        p = self.prev_sig(i)
        while p is not None and toks[p].text in _SPECIFIERS:
            p = self.prev_sig(p)
        start = 0 if p is None else p + 1
        explicit_inst = p is not None and toks[p].text == "template"
        is_template = False
        template_open = None
        if p is not None and toks[p].text == ">":
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
                        template_open = q - 1 if is_template else None
                        break
        # gather attributes around the declaration
        j = start
        decl_attrs = []
        while j < len(toks) and (self.attr_owner[j] is not None or toks[j].kind == "pp" or toks[j].text in _SPECIFIERS):
            if self.attr_owner[j] == j:
                decl_attrs.extend(self.attrs[j][1])
                j = self.attrs[j][0] + 1
            else:
                j += 1
        if j in self.seen_kernels:
            return
        self.seen_kernels.add(j)
        host_name = None
        max_threads = None
        for a in decl_attrs:
            m = re.match(r"host_name\s*\((.*)\)\s*$", a, re.S)
            if m:
                host_name = self.string_literal(m.group(1), j)
            m = _MAX_THREADS_RE.match(a)
            if m:
                max_threads = m.group(1).strip()
        # return type (void, decltype(...) or a type name in an explicit instantiation) and name
        if toks[j].text == "decltype":
            k = match(toks, j + 1, "(", ")") + 1
        elif toks[j].text == "void":
            k = j + 1
        elif explicit_inst and toks[j].kind == "id":
            k = j + 1  # `template [[host_name("x")]] kernel fn_t f<...>;` (typedef of a kernel's type, llama.cpp)
            while k + 1 < len(toks) and toks[k].text == "::" and toks[k + 1].kind == "id":
                k += 2
        else:
            raise self.err(j, "kernel functions must return void")
        if toks[k].kind != "id":
            raise self.err(k, "cannot parse the kernel declaration (expected a function name)")
        name = toks[k].text
        fname, fline = self.src.origin[toks[k].line]
        k += 1
        targs = ""
        if k < len(toks) and toks[k].text == "<":
            close = match_angle(toks, k)
            targs = self.text[toks[k].start:toks[close].end]
            k = close + 1
        if explicit_inst:
            if not targs:
                raise self.err(k, "explicit kernel instantiation without template arguments")
            self.pending_inst.append((host_name or name, name, targs, fname, fline, k, p))
            return
        if toks[k].text != "(":
            raise self.err(k, f"cannot parse the parameter list of kernel '{name}'")
        params, gates = self.kernel_params(name, k, match(toks, k, "(", ")"))
        if max_threads is not None:
            max_threads = self.max_threads_expr(name, max_threads, template_open if is_template else None, p)
        d = KernelDef(name, is_template, params, host_name, fname, fline, gates, max_threads)
        self.defs[name] = d
        if not is_template:
            self.entries.append(KernelEntry(host_name or name, name, params, fname, fline, gates,
                                            None if max_threads is None else max_threads))

    def string_literal(self, text: str, at: int) -> str:
        """The value of one or more adjacent string literals (joined, as C++ does after macro expansion)."""
        parts = _STRING_RE.findall(text)
        if not parts or _STRING_RE.sub("", text).strip():
            raise self.err(at, f"[[host_name({text})]]: expected a string literal")
        return "".join(re.sub(r"\\(.)", r"\1", p) for p in parts)

    def max_threads_expr(self, name: str, expr: str, template_open: Optional[int], template_close: Optional[int]):
        """C++ expression for the kernel's thread limit; a template's depends on its parameters, so a helper
        template with the same parameter list is placed before the kernel and instantiated per entry."""
        if template_open is None:
            return f"({expr})"
        toks = self.toks
        header = self.text[toks[template_open].start:toks[template_close].end]
        self.edits.append((toks[template_open].start, toks[template_open].start,
                           f"{header} constexpr unsigned fasim_maxtg_{name}() {{ return ({expr}); }}\n"))
        return f"fasim_maxtg_{name}"

    def kernel_params(self, name: str, k: int, close: int):
        toks = self.toks
        params = []
        gates = []
        declared_ids = {}  # attribute -> (type, token index)
        for a, b in split_top(toks, k + 1, close):
            items = [it for _, it in self.attr_items_between(a, b)]
            binds = []
            id_types = []
            gate = None
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
                elif nm == "threadgroup":  # dynamic threadgroup memory: a `threadgroup T*` the launch sizes
                    m = re.match(r"threadgroup\s*\(\s*(\d+)\s*\)", it)
                    if not m or int(m.group(1)) >= 31:
                        raise self.err(a, f"bad index in [[{it}]] (expected 0..30)")
                    binds.append(("tgmem", m.group(1)))
                elif nm == "function_constant":
                    gate = self.fc_gate(it, a)
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
                raise self.err(a, f"kernel '{name}': parameter '{' '.join(words)}' needs exactly one [[buffer(n)]], "
                                  "[[threadgroup(n)]] or id attribute")
            params.append(binds[0])
            if gate is not None:
                if binds[0][0] != "buffer":
                    raise self.err(a, f"kernel '{name}': [[function_constant({gate})]] on a thread id: the simulator "
                                      "supports it on buffer arguments only")
                gates.append((len(params) - 1, gate))
            for nm, at in id_types:
                declared_ids[nm] = (" ".join(w for w in words[:-1] if w != "const"), at)
        self.check_id_types(name, declared_ids)
        used = {int(v) for kind, v in params if kind == "buffer" and v is not None}
        free = (i for i in range(31) if i not in used)
        params = [("buffer", str(next(free))) if (kind == "buffer" and v is None) else (kind, v)
                  for kind, v in params]
        return params, [(int(params[p][1]), g) for p, g in gates]

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

    def instantiate(self) -> None:
        """Explicit instantiations become entries once every definition is known."""
        for host, name, targs, fname, fline, k, tpl in self.pending_inst:
            d = self.defs.get(name)
            if d is None:
                raise self.err(k, f"explicit instantiation of kernel '{name}' before (or without) its definition")
            mt = None if d.max_threads is None else (f"{d.max_threads}{targs}()" if d.is_template else d.max_threads)
            self.entries.append(KernelEntry(host, name + targs, d.params, fname, fline, d.gates, mt))
            if self.only is not None and host != self.only:
                # translate(..., kernel=NAME): an explicit instantiation of another kernel would instantiate it
                semi = k
                while semi < len(self.toks) and self.toks[semi].text != ";":
                    semi += 1
                self.replace_range(self.toks[tpl].start, self.toks[min(semi, len(self.toks) - 1)].end, "")
        names = [e.name for e in self.entries]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise TranslateError(f"kernel name(s) registered twice: {sorted(dup)}")
