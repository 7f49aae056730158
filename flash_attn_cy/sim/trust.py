"""The simulator's trust boundary: what a .metal file may contain before it is compiled and run as native code.

Simulating a kernel means compiling it as C++ and running it inside this process, so a file could otherwise call
``system()``, declare ``extern "C"`` functions or run static initialisers. Before a file is compiled (``sim run``) or
passed (``sim check``) it must stay inside the MSL subset:

* Source rules (:func:`scan_sources`, on the tokens of the file and the local headers it includes): no ``extern``,
  no ``asm``; no reserved identifiers (``__x``, ``_X``: compiler builtins and the predefined macros that tell one
  compiler from another, through which the preprocessor could show the checker other code than the compiler) except
  the MSL ones in :data:`RESERVED_ALLOWED`, anything inside ``__attribute__((...))`` and ``_Pragma("...")`` with an
  allowed pragma; only the usual preprocessor
  directives (no ``#line``, ``#include_next``, ``#import``, ``#embed``, computed ``#include``, unknown ``#pragma``);
  quoted includes name files in the kernel's directory (or a directory given with ``-I``), not absolute paths or
  paths that climb out of it. ``<...>`` includes other than ``<metal_*>`` are already refused by the translator.
* Compiled rules (:func:`check_ir`, on clang's LLVM IR of exactly the translated source that is compiled): every
  function or variable the module would import is an MSL built-in of the simulator runtime (``fasim::``), a C math
  function or an LLVM intrinsic; no inline or module ``asm``; no ``ifunc``, no object or function in a named
  section; the only code that runs when the module is loaded is the generated kernel registration (so no
  namespace-scope object with dynamic initialisation, no ``__attribute__((constructor))``, no static destructor).

Each refusal names the file and line. This is a filter against accidents and the obvious attacks, not a sandbox: a
kernel can still forge a pointer and write anywhere in the process, so only files one trusts should be simulated.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import translate as _tr
from .translate import lexer as _lexer

__all__ = ["KernelRefused", "scan_sources", "check_ir", "emit_ir", "RESERVED_ALLOWED"]


from ..errors import KernelRefused  # declared with the package's other exceptions in flash_attn_cy/errors.py


# Reserved identifiers MSL code may use: Apple's predefined macros (undefined for both host compilers alike), the
# standard position macros, and attribute spellings.
RESERVED_ALLOWED = frozenset({
    "__METAL_VERSION__", "__METAL__", "__METAL_MACOS__", "__METAL_IOS__", "__HAVE_BFLOAT__",
    "__VA_ARGS__", "__FILE__", "__LINE__",
    "__COUNTER__", "__func__", "__attribute__", "__restrict", "__restrict__",
    "__METAL_FAST_MATH__", "__METAL_PRECISE_MATH__", "__METAL_MAYBE_FAST_MATH__",
    "__is_empty",  # a type-trait builtin that Apple's compiler and both host compilers have (MLX's steel traits)
})
# Apple's compiler builtins (`__metal_exp(x, __METAL_FAST_MATH__)`, MLX's bf16_math.h): the compatibility layer
# defines the ones it supports (csrc/sim/include/fasim_builtins.h) and no host compiler predefines such a name.
_METAL_BUILTIN_RE = re.compile(r"^__metal_[a-z0-9_]+$")
DIRECTIVES_ALLOWED = frozenset({
    "define", "undef", "if", "ifdef", "ifndef", "elif", "elifdef", "elifndef", "else", "endif", "include", "pragma",
    "error", "warning", "",
})
# #pragma NAME ...: the first word. Others (weak, redefine_extname, GCC visibility/system_header, comment, ...) change
# linkage or what the compiler reports, which an MSL kernel has no use for.
PRAGMAS_ALLOWED = frozenset({"once", "unroll", "nounroll", "clang", "METAL", "STDC", "message"})
PRAGMA_GCC_ALLOWED = frozenset({"diagnostic", "unroll", "ivdep"})

_RESERVED_RE = re.compile(r"^(__|_[A-Z]|_$)")
_DIRECTIVE_RE = re.compile(r"^\s*#\s*([A-Za-z_]\w*|\d+)?(.*)$", re.S)


def _tokens(text: str) -> List[_lexer.Tok]:
    return _lexer.tokenize(text)


def _scan_identifiers(toks: Iterable[Tuple[str, int]], where, errors: List[str]) -> None:
    """toks: (identifier text, line) in order; reserved identifiers outside __attribute__((...)) are refused."""
    toks = list(toks)
    i = 0
    while i < len(toks):
        text, line = toks[i]
        if text == "__attribute__":
            # skip the balanced parenthesised argument: attribute names are spelled __x__ legitimately
            j, depth = i + 1, 0
            while j < len(toks):
                if toks[j][0] == "(":
                    depth += 1
                elif toks[j][0] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            i = j + 1
            continue
        if text == "_Pragma":
            # the operator form of #pragma (kernels hide `#pragma clang loop unroll` in macros this way): the same
            # pragmas as the directive
            arg = toks[i + 2][0] if i + 3 < len(toks) and toks[i + 1][0] == "(" and toks[i + 3][0] == ")" else ""
            words = arg[1:-1].split() if arg.startswith('"') else []
            first, second = (words + ["", ""])[:2]
            if not (first in PRAGMAS_ALLOWED or (first == "GCC" and second in PRAGMA_GCC_ALLOWED)):
                errors.append(f"{where(line)}: _Pragma({arg or '...'}) is not allowed in a kernel file")
            i += 4
            continue
        if text in ("extern",):
            errors.append(f"{where(line)}: 'extern' is not MSL: a kernel file may only use what it defines and the "
                          "MSL built-ins")
        elif text in ("asm", "__asm", "__asm__"):
            errors.append(f"{where(line)}: '{text}' (inline assembly) is not MSL")
        elif _RESERVED_RE.match(text) and text not in RESERVED_ALLOWED and not _METAL_BUILTIN_RE.match(text):
            errors.append(f"{where(line)}: reserved identifier '{text}' (compiler builtins and compiler-specific "
                          "macros are not MSL)")
        i += 1


def _directive_tokens(body: str) -> List[str]:
    out = []
    for m in _lexer.TOKEN_RE.finditer(body):
        if m.lastgroup in ("id", "punct", "num", "str"):
            out.append(m.group())
    return out


def scan_sources(files: Sequence[Tuple[str, str]], include_dirs: Sequence[str] = ()) -> List[str]:
    """Source rules on each (path used in messages, text). Returns the refusals, ``file:line: why`` each."""
    errors: List[str] = []
    for path, text in files:
        try:
            toks = _tokens(text)
        except _tr.TranslateError as e:
            errors.append(f"{path}: {e}")
            continue
        base = os.path.dirname(path) or "."
        roots = [os.path.realpath(d) for d in [base] + list(include_dirs)]

        def where(line: int, _p=path) -> str:
            return f"{_p}:{line + 1}"

        ids: List[Tuple[str, int]] = []
        for t in toks:
            if t.kind == "pp":
                body = re.sub(r"//[^\n]*|/\*.*?\*/", " ", t.text, flags=re.S).replace("\\\n", " ")
                m = _DIRECTIVE_RE.match(body)
                name = (m.group(1) or "") if m else ""
                rest = m.group(2) if m else ""
                if name not in DIRECTIVES_ALLOWED:
                    what = "a line marker" if name.isdigit() else f"#{name}"
                    errors.append(f"{where(t.line)}: {what} is not allowed in a kernel file (it would change what "
                                  "the compiler reads or where it thinks it reads it)")
                    continue
                words = _directive_tokens(rest)
                if name == "include":
                    inc = rest.strip()
                    if not (inc.startswith("<") or inc.startswith('"')):
                        errors.append(f"{where(t.line)}: #include with a macro operand: write the file name out")
                    elif inc.startswith('"'):
                        fname = inc[1:].split('"')[0]
                        errors.extend(_check_include(fname, base, roots, where(t.line)))
                    continue
                if name == "pragma":
                    first = words[0] if words else ""
                    second = words[1] if len(words) > 1 else ""
                    if not (first in PRAGMAS_ALLOWED or (first == "GCC" and second in PRAGMA_GCC_ALLOWED)):
                        errors.append(f"{where(t.line)}: #pragma {' '.join(words[:2])} is not allowed in a kernel "
                                      "file")
                    continue
                if name in ("error", "warning"):
                    continue  # free text
                local = set()
                if name == "define" and re.match(r"\s*\w+\(", rest):
                    # a function-like macro's parameter names are its own (MLX spells them __op__)
                    close = words.index(")") if ")" in words else len(words)
                    local = {w for w in words[2:close] if w != ","}
                elif name in ("if", "ifdef", "ifndef", "elif", "elifdef", "elifndef"):
                    # feature-test macros, read by the simulator's own preprocessor only (undefined there)
                    local = {w for w in words if w.startswith("__cpp_")}
                ids.extend((w, t.line) for w in words if w not in local)
            elif t.kind in ("id", "punct", "str"):
                ids.append((t.text, t.line))
        _scan_identifiers(ids, where, errors)
    return errors


def _check_include(fname: str, base: str, roots: List[str], at: str) -> List[str]:
    if os.path.isabs(fname):
        return [f'{at}: #include "{fname}": an absolute path; kernel files include only files beside them']
    for d in [base] + roots[1:]:
        cand = os.path.join(d, fname)
        if os.path.isfile(cand):
            real = os.path.realpath(cand)
            if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
                return [f'{at}: #include "{fname}" resolves to {real}, outside the kernel\'s directory and the '
                        "include directories"]
            return []
    return []  # not found: the translator reports it


# --- compiled rules ---------------------------------------------------------------------------------------------

_MATH = ("exp exp2 exp10 expm1 log log2 log10 log1p pow sqrt cbrt sin cos tan asin acos atan atan2 sinh cosh tanh "
         "asinh acosh atanh floor ceil round rint nearbyint trunc fabs fmod remainder fmin fmax fma hypot ldexp frexp "
         "modf copysign nextafter erf erfc sincos lround lrint llround llrint ilogb logb scalbn fdim").split()
IMPORTS_ALLOWED = frozenset([f for m in _MATH for f in (m, m + "f")] + ["memcpy", "memmove", "memset"])
IMPORT_PREFIXES_ALLOWED = ("llvm.", "_ZN5fasim", "_ZNK5fasim", "_ZTHN5fasim", "_ZTWN5fasim")
# The one thing the generated kernel registration runs at load time (the translator's trampolines, translate/emit.py).
REGISTRAR_CTOR = "_ZN5fasim15KernelRegistrarC1EPNS_10KernelInfoEb"  # KernelRegistrar(KernelInfo *, bool)
FRIENDLY = {
    "__cxa_guard_acquire": "a static local variable with dynamic initialisation",
    "__cxa_atexit": "an object with a destructor at namespace or static scope",
    "__cxa_thread_atexit": "a thread_local object with a destructor",
}

_NAME = r'(?:"[^"]+"|[\w.$]+)'
_DECLARE_RE = re.compile(rf"^declare [^@]*@({_NAME})\(", re.M)
_EXTERN_GLOBAL_RE = re.compile(rf"^@({_NAME}) = (?:[\w ]*?)(?:external|extern_weak)\b", re.M)
# Definitions the code generator may drop and import instead.
_AVAILABLE_EXTERNALLY_RE = re.compile(rf"^(?:define|@({_NAME}) =) [^@\n]*\bavailable_externally\b[^@\n]*@?({_NAME})?",
                                      re.M)
_DEFINE_RE = re.compile(rf"^define [^@]*@({_NAME})\((.*)$", re.M)
_REF_RE = re.compile(rf"@({_NAME})")
_DBG_RE = re.compile(r"!dbg !(\d+)")
_META_RE = re.compile(r"^!(\d+) = (?:distinct )?!(\w+)\((.*)\)\s*$", re.M)


class _Debug:
    """Maps !dbg references of clang's IR to 'file:line' (through DILocation scopes to the DIFile)."""

    def __init__(self, ll: str):
        self.meta: Dict[str, Tuple[str, str]] = {m.group(1): (m.group(2), m.group(3)) for m in _META_RE.finditer(ll)}

    def _field(self, body: str, name: str) -> Optional[str]:
        m = re.search(rf"\b{name}: (?:!(\d+)|\"((?:[^\"\\]|\\.)*)\"|(\d+))", body)
        if not m:
            return None
        return m.group(1) or m.group(2) or m.group(3)

    def _file(self, ref: str, depth: int = 0) -> Optional[str]:
        if depth > 50 or ref not in self.meta:
            return None
        kind, body = self.meta[ref]
        if kind == "DIFile":
            return self._field(body, "filename")
        f = self._field(body, "file")
        if f:
            return self._file(f, depth + 1)
        s = self._field(body, "scope")
        return self._file(s, depth + 1) if s else None

    def where(self, ref: Optional[str]) -> Optional[str]:
        if not ref or ref not in self.meta:
            return None
        kind, body = self.meta[ref]
        line = self._field(body, "line")
        if kind == "DILocation":
            f = self._file(self._field(body, "scope") or "")
        else:
            f = self._file(ref)
        if not f or not line:
            return None
        return f"{f}:{line}"


def _functions(ll: str) -> List[Tuple[str, str, str]]:
    """(name, header line, body) of every function defined in the IR."""
    out = []
    for m in _DEFINE_RE.finditer(ll):
        end = ll.find("\n}\n", m.end())
        out.append((m.group(1).strip('"'), m.group(0), ll[m.end():end if end >= 0 else len(ll)]))
    return out


def _allowed_import(name: str) -> bool:
    return name in IMPORTS_ALLOWED or name.startswith(IMPORT_PREFIXES_ALLOWED)


def _demangle(name: str) -> str:
    import shutil
    tool = shutil.which("c++filt") or shutil.which("llvm-cxxfilt") or shutil.which("llvm-cxxfilt-19")
    if not tool or not name.startswith("_Z"):
        return name
    try:
        return subprocess.run([tool, name], stdout=subprocess.PIPE, text=True, timeout=30).stdout.strip() or name
    except (OSError, subprocess.SubprocessError):
        return name


def check_ir(ll: str, label: str) -> List[str]:
    """Compiled rules on clang's LLVM IR of a translated kernel file. Returns the refusals, 'file:line: why' each."""
    dbg = _Debug(ll)
    errors: List[str] = []

    def at(text: str, fallback: str) -> str:
        m = _DBG_RE.search(text)
        return (dbg.where(m.group(1)) if m else None) or fallback

    imports = {n.strip('"') for n in _DECLARE_RE.findall(ll)} | {n.strip('"') for n in _EXTERN_GLOBAL_RE.findall(ll)}
    for m in _AVAILABLE_EXTERNALLY_RE.finditer(ll):
        name = m.group(1) or m.group(2)
        if name:
            imports.add(name.strip('"'))
    bad = {n for n in imports if not _allowed_import(n)}
    funcs = _functions(ll)
    reported = set()
    for name, head, body in funcs:
        for line in body.split("\n"):
            s = line.strip()
            if re.search(r"\b(call|invoke|callbr)\b.*\basm\b", s):
                errors.append(f"{at(line, at(head, label))}: inline assembly is not MSL")
            for ref in _REF_RE.findall(line):
                r = ref.strip('"')
                if r in bad and r not in reported:
                    reported.add(r)
                    what = FRIENDLY.get(r) or (f"uses '{_demangle(r)}', which is neither an MSL built-in nor defined "
                                               "in the kernel file")
                    errors.append(f"{at(line, at(head, label))}: {what}")
    for r in sorted(bad - reported):
        errors.append(f"{label}: uses '{_demangle(r)}', which is neither an MSL built-in nor defined in the kernel file")
    if re.search(r"^module asm\b", ll, re.M):
        errors.append(f"{label}: file-scope asm is not MSL")
    for m in re.finditer(rf"^@({_NAME}) = .*\bifunc\b", ll, re.M):
        errors.append(f"{label}: '{_demangle(m.group(1).strip(chr(34)))}' is an ifunc (code run by the loader)")
    for m in re.finditer(rf"^@({_NAME}) = .*\bsection \"([^\"]*)\"(.*)$", ll, re.M):
        if m.group(1).startswith("llvm."):  # @llvm.used & co. (__attribute__((used))): compiler bookkeeping
            continue
        errors.append(f"{at(m.group(0), label)}: '{_demangle(m.group(1).strip(chr(34)))}' is placed in section "
                      f"'{m.group(2)}' (__attribute__((section)) is not MSL)")
    inits = {}
    for name, head, body in funcs:
        sec = re.search(r'\bsection "([^"]*)"', head)
        if sec and sec.group(1) != ".text.startup":
            errors.append(f"{at(head, label)}: function '{_demangle(name)}' is placed in section '{sec.group(1)}' "
                          "(__attribute__((section)) is not MSL)")
        inits[name] = (head, body)
    if re.search(r"^@llvm\.global_dtors\b", ll, re.M):
        errors.append(f"{label}: a static destructor (code run when the module is unloaded) is not MSL")
    ctors = re.search(r"^@llvm\.global_ctors = .*$", ll, re.M)
    for ctor in (re.findall(rf"ptr @({_NAME})", ctors.group(0)) if ctors else []):
        ctor = ctor.strip('"')
        head, body = inits.get(ctor, ("", ""))
        if not ctor.startswith("_GLOBAL__sub_I_"):
            errors.append(f"{at(head, label)}: '{_demangle(ctor)}' runs when the module is loaded "
                          "(__attribute__((constructor)) is not MSL)")
            continue
        stray = [ln for ln in body.split("\n") if ln.strip() and not re.match(r"\s*(call void @|ret void)", ln)]
        if stray:
            errors.append(f"{at(body, label)}: code run when the module is loaded is not MSL")
        for sub in re.findall(rf"call void @({_NAME})\(", body):
            sub = sub.strip('"')
            shead, sbody = inits.get(sub, ("", ""))
            calls = re.findall(rf"\b(?:call|invoke) [^@]*@({_NAME})\(", sbody)
            other = [ln for ln in sbody.split("\n") if ln.strip() and not ln.strip().startswith(("call ", "ret "))]
            if calls and all(c == REGISTRAR_CTOR for c in calls) and not other:
                continue  # the generated kernel registration
            errors.append(f"{at(sbody, at(shead, label))}: a namespace-scope object with dynamic initialisation "
                          "(code run when the module is loaded) is not MSL: initialise it with a constant expression")
    return errors


def emit_ir(clang: str, code: str, flags: Sequence[str], include_dirs: Sequence[str]) -> Tuple[Optional[str], str]:
    """clang's LLVM IR for translated code (frontend only, so it is exactly what the compiler starts from).

    Returns (IR, "") or (None, clang's error output)."""
    with tempfile.TemporaryDirectory(prefix="fasim-trust-") as d:
        src = os.path.join(d, "kernel.cpp")
        out = os.path.join(d, "kernel.ll")
        with open(src, "w", encoding="utf-8") as fh:
            fh.write(code)
        cmd = [clang] + list(flags) + [a for i in include_dirs for a in ("-I", str(i))] + [
            "-Xclang", "-disable-llvm-optzns", "-S", "-emit-llvm", "-x", "c++", src, "-o", out]
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except OSError as e:
            return None, f"cannot run {clang}: {e}"
        if p.returncode != 0:
            return None, p.stdout.strip()
        with open(out, encoding="utf-8", errors="replace") as fh:
            return fh.read(), p.stdout.strip()


UNCHECKED_ENV = "FLASH_ATTN_CY_SIM_UNCHECKED"
SALT = "trust-1"  # in the module cache key: modules built before these checks (or unchecked) are never reused


def unchecked() -> bool:
    """True when the user turned the checks off (FLASH_ATTN_CY_SIM_UNCHECKED=1): files are then compiled as they are."""
    return os.environ.get(UNCHECKED_ENV, "") == "1"


def check_translation(tr: "_tr.Translation", source: str, path: str, include_dirs: Sequence[str]) -> None:
    """Source rules on a translated file and its local includes; raises KernelRefused."""
    files = [(path, source)]
    roots = [os.path.realpath(d) for d in [os.path.dirname(path) or "."] + list(include_dirs)]
    for dep in tr.dependencies:
        real = os.path.realpath(dep)
        if not any(real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
            continue  # refused where it is included; its own content would only repeat that

        try:
            with open(dep, encoding="utf-8") as fh:
                files.append((dep, fh.read()))
        except OSError as e:
            raise KernelRefused(f"{dep}: cannot read: {e}") from None
    errors = scan_sources(files, include_dirs)
    if errors:
        raise KernelRefused(_refusal(path, errors))


def check_compiled(code: str, label: str, clang: str, flags: Optional[Sequence[str]] = None) -> None:
    """Compiled rules on the translated C++ about to be compiled with `flags` (default: the module flags); raises
    KernelRefused, or SimCompileError when clang cannot compile it (its message names file and line)."""
    from . import _compile
    rt = _compile.runtime_dir()
    flags = list(flags) if flags is not None else _compile.CXXFLAGS + _compile.MODULE_FLAGS
    ll, out = emit_ir(clang, code, flags, [rt, rt / "include"])
    if ll is None:
        raise _compile.SimCompileError(f"compiling {label} for the simulator failed:\n{out}")
    errors = check_ir(ll, label)
    if errors:
        raise KernelRefused(_refusal(label, errors))


def _refusal(path: str, errors: List[str]) -> str:
    uniq = list(dict.fromkeys(errors))
    return (f"{path}: refused: the simulator runs kernel files as native code and accepts only the MSL subset "
            f"(kernels/README.md, 'Trust'):\n" + "\n".join(uniq[:20]) +
            (f"\n... and {len(uniq) - 20} more" if len(uniq) > 20 else ""))
