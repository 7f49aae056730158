"""The simulator's MSL preprocessor (csrc/sim/translate/preprocess.py): the C preprocessor's rules as kernels rely on
them, checked against hand-written expectations, and the positions it keeps for messages."""

import re
from pathlib import Path

import pytest

sim = pytest.importorskip("flash_attn_cy.sim")
import importlib  # noqa: E402

pp = importlib.import_module("flash_attn_cy.sim.translate.preprocess")  # the module (the package re-exports a function of that name)

from _paths import ROOT  # noqa: E402


def code(src, **kw):
    """The preprocessed text without #line markers and blank lines, tokens joined as rendered."""
    r = pp.preprocess(src, "t.metal", **kw)
    return " ".join(ln for ln in r.lines if ln.strip() and not ln.startswith("#line"))


@pytest.mark.parametrize("src,want", [
    ("#define N 4\nint a[N];", "int a[4];"),
    ("#define SQ(x) ((x) * (x))\nSQ(a + 1)", "((a + 1) * (a + 1))"),
    ("#define F(x) G(x)\n#define G(x) x + 1\nF(F(2))", "2 + 1 + 1"),
    ("#define CAT(a, b) a##b\n#define N 4\nCAT(x, N) CAT(1, 2)", "xN 12"),
    ("#define STR(x) #x\n#define XSTR(x) STR(x)\n#define N 4\nSTR(N) XSTR(N) STR(a  \"b\")", '"N" "4" "a \\"b\\""'),
    ("#define V(f, ...) f(__VA_ARGS__)\nV(g, 1, 2) V(h)", "g(1, 2) h()"),
    ("#define E(f, ...) f(0, ##__VA_ARGS__)\nE(g) E(g, 1)", "g(0) g(0,1)"),
    ("#define foo foo + 1\nfoo", "foo + 1"),                        # no endless self-expansion
    ("#define x (4 + y)\n#define y (2 * x)\nx y", "(4 + (2 * x)) (2 * (4 + y))"),  # C11 6.10.3.4 example 3
    ("#define F(a, b) a + b\nF(1,\n  2)", "1 + 2"),                  # invocation over two lines
    ("#define F() 7\n#define G F\nG() F", "7 F"),                    # a function-like name without ( stays
    ("#if 1 + 2 * 3 == 7 && !defined(X) && (5 / 2 == 2) && (-7 % 3 == -1)\nyes\n#else\nno\n#endif", "yes"),
    ("#define X 0\n#if X\na\n#elif defined X && X == 0\nb\n#else\nc\n#endif", "b"),
    ("#ifdef UNDEFINED\n#if garbage (((\n#error never\n#endif\n#else\nok\n#endif", "ok"),
    ("#if __METAL_VERSION__ >= 310 && __HAVE_BFLOAT__ && defined(FLT_MAX) && defined(METAL_FUNC)\nv\n#endif", "v"),
    ("#if 0x10 == 16 && 010 == 8 && 'A' == 65 && 1u == 1\nlit\n#endif", "lit"),
    ("#if __has_include(<metal_stdlib>) && !__has_include(\"no_such.h\")\nh\n#endif", "h"),
    ("#define N 1\n#undef N\n#ifndef N\nundef\n#endif", "undef"),
    ("a __LINE__\nb __LINE__", "a 1 b 2"),
])
def test_macro_and_conditional_rules(src, want):
    assert code(src) == want


def test_defines_override_and_add():
    src = "#ifndef TILE\n#define TILE 4\n#endif\nTILE MODE"
    assert code(src) == "4 MODE"
    assert code(src, defines={"TILE": "8", "MODE": "fast"}) == "8 fast"
    assert code("#ifdef FASIM\nsim\n#endif") == "sim"  # translating for execution
    assert code("#ifdef FASIM\nsim\n#endif", simulator=False) == ""


@pytest.mark.parametrize("src,needle", [
    ("#error stop here\n", "t.metal:1: #error stop here"),
    ("#if 1\n", "#if without #endif"),
    ("#else\n", "without #if"),
    ("#if 1\n#else\n#elif 1\n#endif\n", "after #else"),
    ("#define F(a, b) a\nF(1)\n", "takes 2 argument(s), given 1"),
    ("#define F(a) a\nF(1\n", "unterminated"),
    ("#define P(a, b) a##b\nP(+, /)\n", "does not give a valid token"),
    ("#if 1 / 0\n#endif\n", "division by zero"),
    ("#if __has_feature(x)\n#endif\n", "feature tests"),
    ("#import \"x.h\"\n", "not a preprocessor directive MSL has"),
    ('#include "missing.h"\n', "file not found"),
])
def test_errors_name_the_line(src, needle):
    with pytest.raises(sim.TranslateError) as e:
        pp.preprocess(src, "t.metal")
    assert needle in str(e.value) and "t.metal:" in str(e.value), str(e.value)


def test_warning_is_kept():
    assert pp.preprocess("#warning careful\n", "t.metal").warnings == ["t.metal:1: #warning careful"]


def test_positions_survive_includes_and_multiline_invocations(tmp_path):
    (tmp_path / "h.h").write_text("#pragma once\n\ninline int h() { return 1; }\n")
    (tmp_path / "k.metal").write_text(
        '#include "h.h"\n#include "h.h"\n#define F(a, b) a + b\nint x = F(1,\n 2);\n\n\nint y = bad_here;\n')
    r = pp.preprocess((tmp_path / "k.metal").read_text(), str(tmp_path / "k.metal"), [])
    at = {ln.strip(): r.where(i) for i, ln in enumerate(r.lines) if ln.strip() and not ln.startswith("#line")}
    assert at["inline int h() { return 1; }"].endswith("h.h:3")
    assert at["int x = 1 + 2"].endswith("k.metal:4")
    assert at["int y = bad_here;"].endswith("k.metal:8")
    assert r.deps == [str(tmp_path / "h.h")]
    # the translator's messages use these positions
    with pytest.raises(sim.TranslateError, match=r"k\.metal:9"):
        sim.translate((tmp_path / "k.metal").read_text() + "kernel int k() { return 0; }\n",
                      str(tmp_path / "k.metal"))


def test_metal_stdlib_macro_list_matches_the_compatibility_headers():
    """METAL_STDLIB_MACROS (what #ifdef sees as defined by <metal_stdlib>) is what the headers define."""
    inc = ROOT / "csrc" / "sim" / "include"
    defined = set()
    for name in ("fasim_math.h", "fasim_check.h", "fasim_constants.h"):
        defined |= set(re.findall(r"^#define (\w+)", (inc / name).read_text(), re.M))
    user_visible = {m for m in defined if not m.startswith("FASIM_")}
    assert user_visible == set(pp.METAL_STDLIB_MACROS)
