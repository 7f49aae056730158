"""Function constants (MSL specification §5.8.1, "Specifying Program Scope Function Constants").

`constant T name [[function_constant(index)]];` is a value the host fixes when it creates the pipeline
(MTLFunctionConstantValues); `is_function_constant_defined(name)` says whether it was given one; program-scope
`constant` variables initialised from function constants, and `[[function_constant(name)]]` on a kernel argument
(the argument exists only when that bool constant is true) depend on them.

In the simulator the values come with each launch (csrc/sim/include/fasim_rt.h, FcDecl/FcValue), so one compiled
module serves every specialisation: the translator replaces each declaration by a small accessor and rewrites every
use of the name into a call of it (`has_mask` -> `fasim_fc_3()`), which returns the launch's value with the declared
type, or faults when the launch gave none (Metal cannot create a function whose required constant has no value).
A derived program-scope constant becomes an accessor that evaluates its initialiser. The strict check keeps the names
and declares them `extern const` in the constant address space: usable like MSL's, but not in constant
expressions (template arguments, array sizes), which Metal refuses too.

Uses are rewritten by name, so the pass follows C++ scoping where a local variable or parameter of the same name
shadows a function constant (MLX's kernels do this): inside its block, for statement or function body the name is
left alone."""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Set

from .errors import TranslateError
from .lexer import c_string, match, open_angle_before
from .model import FunctionConstant
from .pp_expr import evaluate
from .pp_tokens import lex_lines

__all__ = ["FunctionConstantPass", "MTL_DATA_TYPES", "SCALAR_BYTES"]

# MTLDataType codes of the scalar types (Metal's MTLDataType.h); an N-vector is the scalar's code + N - 1.
MTL_DATA_TYPES = {"float": 3, "half": 16, "int": 29, "uint": 33, "short": 37, "ushort": 41, "char": 45, "uchar": 49,
                  "bool": 53, "long": 81, "ulong": 85, "bfloat": 121}
SCALAR_BYTES = {"float": 4, "half": 2, "int": 4, "uint": 4, "short": 2, "ushort": 2, "char": 1, "uchar": 1,
                "bool": 1, "long": 8, "ulong": 8, "bfloat": 2}
_ALIASES = {"int32_t": "int", "uint32_t": "uint", "int16_t": "short", "uint16_t": "ushort", "int8_t": "char",
            "uint8_t": "uchar", "int64_t": "long", "uint64_t": "ulong", "size_t": "ulong", "unsigned": "uint",
            "signed": "int", "unsigned int": "uint", "unsigned short": "ushort", "unsigned char": "uchar",
            "signed char": "char", "unsigned long": "ulong", "half": "half", "bfloat16_t": "bfloat"}
_VECTOR_RE = re.compile(r"^(bool|char|uchar|short|ushort|int|uint|long|ulong|half|bfloat|float)([234])$")
_NOT_A_DECLARATOR_BEFORE = {"return", "case", "sizeof", "else", "do", "throw", "co_return", "co_yield", "not", "and",
                            "or", "xor", "bitand", "bitor", "compl", "delete", "new", "typename", "goto", "alignof",
                            "decltype", "static_assert", "operator"}
_DECLARATOR_AFTER = {";", "=", ",", ")", "[", "{", ":"}


def msl_type(words: List[str], where: str):
    """(scalar, components) of a function constant's declared type; TranslateError for anything else."""
    text = " ".join(w for w in words if w not in ("const", "constant"))
    text = _ALIASES.get(text, text)
    if text in MTL_DATA_TYPES:
        return text, 1
    m = _VECTOR_RE.match(text)
    if m:
        return m.group(1), int(m.group(2))
    raise TranslateError(f"{where}: function constant of type '{text}': MSL function constants are scalars or "
                         "vectors (bool, char, short, int, long, half, bfloat, float and their unsigned/vector forms)")


def constant_index(text: str, where: str) -> int:
    """Value of the index in [[function_constant(index)]]: an integer constant (macros are already expanded)."""
    toks = [t for ln in lex_lines(text, "<attribute>") for t in ln]
    if any(t.kind == "id" for t in toks):
        raise TranslateError(f"{where}: [[function_constant({text})]]: the index must be an integer constant "
                             "expression the preprocessor can evaluate (literals and macros)")
    v = evaluate(toks, lambda x: x, lambda n: False, lambda n, q: False, where)
    if not 0 <= v <= 65535:
        raise TranslateError(f"{where}: function constant index {v} is outside 0..65535")
    return v


class FunctionConstantPass:
    """Mixin of the translator (translator.py): declarations, uses and is_function_constant_defined."""

    def fc_init(self) -> None:
        self.fcs: Dict[str, FunctionConstant] = {}
        self.derived: Dict[str, int] = {}      # derived program-scope constant -> its number
        self.fc_consumed: Set[int] = set()     # tokens replaced as part of a larger edit
        self.fc_shadows: Dict[str, list] = {}  # name -> [(first, end) token ranges where a local of that name lives]

    def fc_statement_end(self, i: int) -> int:
        """Index of the ';' ending the statement that starts at toks[i] (brackets skipped)."""
        toks = self.toks
        j = i
        while j < len(toks) and toks[j].text != ";":
            if toks[j].text in ("(", "[", "{"):
                j = match(toks, j, toks[j].text, {"(": ")", "[": "]", "{": "}"}[toks[j].text])
            j += 1
        return j

    def fc_declaration(self, i: int) -> bool:
        """At a program-scope `constant` keyword: handles a function constant or a constant derived from one.
        Returns True if the statement's text was replaced (then the caller leaves its tokens alone)."""
        toks = self.toks
        if self.in_parameter_list(i) or self.in_template_arguments(i):
            return False  # `constant T& x [[buffer(n), function_constant(c)]]`: a kernel argument, not a declaration
        end = self.fc_statement_end(i)
        attr_items = [it for _, it in self.attr_items_between(i, end)]
        fc_items = [it for it in attr_items if re.match(r"function_constant\s*\(", it)]
        if fc_items:
            self.fc_declare(i, end, fc_items[0])
            return True
        eq = next((k for k in range(i, end) if toks[k].text == "=" and self.attr_owner[k] is None), None)
        if eq is None or not any(toks[k].kind == "id" and (toks[k].text in self.fcs or toks[k].text in self.derived)
                                 for k in range(eq + 1, end)):
            return False
        names = [k for k in range(i + 1, eq) if toks[k].kind == "id" and self.attr_owner[k] is None]
        if not names:
            raise self.err(i, "cannot parse this constant declaration")
        name_k = names[-1]
        type_words = [toks[k].text for k in range(i + 1, name_k) if self.attr_owner[k] is None and
                      toks[k].text != "const"]
        name = toks[name_k].text
        self.derived[name] = len(self.derived)
        self.fc_consumed.add(name_k)
        if self.mode != "exec":
            return False  # the strict check keeps it as written (an address-space-2 variable)
        # `constant T name = init;` -> `inline T fasim_fcd_K() { return init; }`: evaluated where it is used
        self.replace_range(toks[i].start, toks[eq].end,
                           f"inline {' '.join(type_words)} fasim_fcd_{self.derived[name]}() {{ return")
        self.replace_range(toks[end].start, toks[end].end, "; }")
        return True

    def fc_declare(self, i: int, end: int, item: str) -> None:
        toks = self.toks
        where = self.src.where(toks[i].line)
        words = [k for k in range(i + 1, end) if self.attr_owner[k] is None]
        if not words or toks[words[-1]].kind != "id":
            raise self.err(i, "cannot parse this function constant (expected 'constant T name "
                              "[[function_constant(index)]];')")
        name = toks[words[-1]].text
        scalar, n = msl_type([toks[k].text for k in words[:-1]], where)
        index = constant_index(re.match(r"function_constant\s*\((.*)\)\s*$", item, re.S).group(1), where)
        if name in self.fcs:
            raise self.err(i, f"function constant '{name}' declared twice")
        clash = next((f for f in self.fcs.values() if f.index == index), None)
        if clash is not None:
            raise self.err(i, f"function constants '{clash.name}' and '{name}' share index {index}")
        fname, fline = self.src.origin[toks[i].line]
        tname = scalar if n == 1 else f"{scalar}{n}"
        fc = FunctionConstant(name, index, tname, MTL_DATA_TYPES[scalar] + n - 1, scalar, n, SCALAR_BYTES[scalar] * n,
                              fname, fline, len(self.fcs))
        self.fcs[name] = fc
        self.fc_consumed.update(range(i, end + 1))
        if self.mode == "exec":
            repl = (f'static const ::fasim::FcDecl fasim_fc_decl_{fc.slot}{{"{name}", {index}, {fc.mtl_type}u, '
                    f'{fc.bytes}u, "{c_string(fname)}", {fline}}}; '
                    f"inline {tname} fasim_fc_{fc.slot}(FASIM_SITE_PARAMS) {{ return ::fasim::fc_value<{tname}>("
                    f"&fasim_fc_decl_{fc.slot}, {fc.slot}, fasim_file, fasim_line); }}")
        else:
            repl = f"extern const {self.space_text(2)} {tname} {name}"
        self.replace_range(toks[i].start, toks[end - 1].end, repl)

    def fc_defined_call(self, i: int) -> None:
        """`is_function_constant_defined(name)` at toks[i]."""
        toks = self.toks
        if i + 3 >= len(toks) or toks[i + 1].text != "(" or toks[i + 3].text != ")":
            raise self.err(i, "is_function_constant_defined takes the name of a function constant")
        name = toks[i + 2].text
        fc = self.fcs.get(name)
        if fc is None:
            raise self.err(i, f"is_function_constant_defined({name}): '{name}' is not a function constant declared "
                              "before this point (MSL §5.8.1)")
        self.fc_consumed.update(range(i, i + 4))
        self.replace_range(toks[i].start, toks[i + 3].end, f"::fasim::fc_defined({fc.slot})")

    def fc_use(self, i: int) -> None:
        """An identifier naming a function constant (or a derived constant), outside its declaration."""
        toks = self.toks
        t = toks[i]
        if i > 0 and toks[i - 1].text in (".", "->", "::"):
            return  # a member, or a qualified name: not ours
        if any(a <= i < b for a, b in self.fc_shadows.get(t.text, ())):
            return  # a local variable or parameter of that name is in scope
        prev = self.prev_sig(i)
        nxt = toks[i + 1].text if i + 1 < len(toks) else ""
        # `T name`, or in a parameter list `T &name` / `T *name` (MLX: `const constant int& blocks [[buffer(4)]]`
        # next to a function constant `blocks`)
        typed_ref = (prev is not None and toks[prev].text in ("&", "*") and prev > 0
                     and (toks[prev - 1].kind == "id" or toks[prev - 1].text == ">") and self.in_parameter_list(i)
                     and not self.in_function(i))
        if (prev is not None and (typed_ref or (toks[prev].kind == "id"
                                                and toks[prev].text not in _NOT_A_DECLARATOR_BEFORE))
                and nxt in _DECLARATOR_AFTER):
            if self.in_function(i) or self.in_parameter_list(i):
                self.fc_shadows.setdefault(t.text, []).append((i, self.scope_end(i)))
            return  # a declaration of that name (a struct member's, or one that shadows the constant)
        if self.mode != "exec":
            return
        if t.text in self.fcs:
            self.edits.append((t.start, t.end, f"fasim_fc_{self.fcs[t.text].slot}()"))
        else:
            self.edits.append((t.start, t.end, f"fasim_fcd_{self.derived[t.text]}()"))

    def scope_end(self, i: int) -> int:
        """Index of the token that ends the scope of a variable or parameter declared at toks[i]: the end of the
        enclosing block, of the for statement whose init it is in, or of the body of the function it is a
        parameter of."""
        toks = self.toks
        depth = 0
        for j in range(i - 1, -1, -1):
            tx = toks[j].text
            if tx in (")", "]", "}"):
                depth += 1
            elif tx in ("(", "["):
                if depth:
                    depth -= 1
                    continue
                close = match(toks, j, "(", ")") if tx == "(" else match(toks, j, "[", "]")
                k = close + 1
                while k < len(toks) and toks[k].text not in ("{", ";"):
                    k += 1  # `) const {`, `) -> T {`, attributes
                if k < len(toks) and toks[k].text == "{":
                    return match(toks, k, "{", "}")
                if j > 0 and toks[j - 1].text in ("for", "while", "if", "switch"):
                    return k  # a statement without braces
                return close
            elif tx == "{":
                if depth:
                    depth -= 1
                    continue
                return match(toks, j, "{", "}")
        return len(toks)

    def in_parameter_list(self, i: int) -> bool:
        """toks[i] is inside a parenthesised list at namespace or struct scope (a function's parameters)."""
        depth = 0
        for j in range(i - 1, -1, -1):
            tx = self.toks[j].text
            if tx in (")", "]"):
                depth += 1
            elif tx in ("(", "["):
                if depth == 0:
                    return tx == "("
                depth -= 1
            elif tx in ("{", "}", ";") and depth == 0:
                return False
        return False

    def in_template_arguments(self, i: int) -> bool:
        """toks[i] follows an unclosed '<' of the current statement (`foo<constant T*>`)."""
        return open_angle_before(self.toks, i, lambda t: t.text in (";", "{", "}")) is not None

    def fc_gate(self, item: str, where_tok: int) -> Optional[str]:
        """The bool constant named by a kernel argument's [[function_constant(name)]]."""
        m = re.match(r"function_constant\s*\(\s*(\w+)\s*\)\s*$", item)
        name = m.group(1) if m else item
        fc = self.fcs.get(name)
        if fc is None or fc.type != "bool":
            raise self.err(where_tok, f"[[{item}]] on a kernel argument needs a bool function constant declared "
                                      "before the kernel (MSL §5.8.1.2)")
        return name
