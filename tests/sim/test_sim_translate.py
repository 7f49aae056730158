"""The MSL -> C++ pass: supported forms translate, unsupported ones are errors naming the construct and line."""

import pytest

from flash_attn_cy.sim.translate import TranslateError, translate
from _paths import ROOT  # noqa: E402

HEAD = "#include <metal_stdlib>\nusing namespace metal;\n"


def test_kernel_forms_and_threadgroup_declarations():
    src = HEAD + """
template <typename T, int D>
[[kernel]] void f(device const T* q [[buffer(0)]], constant uint& n [[buffer(3)]],
                  uint3 tg [[threadgroup_position_in_grid]], ushort lane [[thread_index_in_simdgroup]]) {
    threadgroup T tile[D][D + 1];
    threadgroup float* p = &tile[0][0];
    (void)p;
}
template [[host_name("f_half_64")]] [[kernel]] void f<half, 64>(device const half* q [[buffer(0)]],
    constant uint& n [[buffer(3)]], uint3 tg [[threadgroup_position_in_grid]],
    ushort lane [[thread_index_in_simdgroup]]);
template [[host_name("f_float_32")]] [[kernel]] decltype(f<float, 32>) f<float, 32>;
kernel void g(device float* y [[buffer(1)]]) { y[0] = 1.0h; }
"""
    tr = translate(src, "x.metal")
    names = sorted(k.name for k in tr.kernels)
    assert names == ["f_float_32", "f_half_64", "g"]
    f = next(k for k in tr.kernels if k.name == "f_half_64")
    assert f.call == "f<half, 64>"
    assert f.params == [("buffer", "0"), ("buffer", "3"), ("id", "kIdTgPosInGrid"), ("id", "kIdLaneInSimd")]
    assert "tg_alloc" in tr.code and "T (&tile)[D][D + 1]" in tr.code.replace(" D ", "D").replace("[ D", "[D") \
        or "(&tile)" in tr.code
    assert "half(1.0f)" in tr.code
    assert "device" not in tr.code.split("namespace {", 1)[1].split("<simulator trampolines>")[0].replace(
        "mem_device", "")


@pytest.mark.parametrize("body,needle,line", [
    ("kernel void k(device float* y [[buffer(0)]], threadgroup float* t [[threadgroup(31)]]) {}",
     "expected 0..30", 3),
    ("constant float2x2 flag [[function_constant(0)]];", "function constant of type", 3),
    ("kernel void k(device float* y [[buffer(0)]]) { y[0] = is_function_constant_defined(y); }",
     "not a function constant", 3),
    ("kernel void k(device float* y [[buffer(0)]]) {\n  threadgroup float t[4] = {0};\n}", "initializer", 4),
    ("kernel void k(device float* y [[buffer(0)]]) {\n  threadgroup float a[4], b[4];\n}", "one threadgroup", 4),
    ("kernel void k(device float* y [[buffer(0)]], uint i) {}", "exactly one", 3),
    ("vertex float4 v() { return 0; }", "vertex", 3),
    ("kernel void k(texture2d<float> t [[texture(0)]]) {}", "texture", 3),
    ("kernel int k(device float* y [[buffer(0)]]) { return 0; }", "return void", 3),
])
def test_unsupported_constructs_are_errors_with_line(body, needle, line):
    with pytest.raises(TranslateError) as e:
        translate(HEAD + body + "\n", "bad.metal")
    assert needle in str(e.value)
    assert f"bad.metal:{line}" in str(e.value)


def test_system_headers_become_errors_unless_preprocessed_away():
    tr = translate("#include <cmath>\n#ifndef __METAL_VERSION__\n#include <stdint.h>\n#endif\n", "h.metal")
    assert '#error "h.metal:1: #include <cmath>' in tr.code
    assert not any(ln.lstrip().startswith("#include <") for ln in tr.code.splitlines())


def test_local_headers_are_inlined(tmp_path):
    (tmp_path / "tile.h").write_text("#pragma once\ninline float twice(float x) { return 2 * x; }\n")
    (tmp_path / "k.metal").write_text(HEAD + '#include "tile.h"\n#include "tile.h"\n'
                                      "kernel void k(device float* y [[buffer(0)]]) { y[0] = twice(1); }\n")
    from flash_attn_cy.sim.translate import translate_file
    tr = translate_file(str(tmp_path / "k.metal"))
    assert tr.code.count("inline float twice") == 1
    assert str(tmp_path / "tile.h") in tr.dependencies[0]


def test_buffer_arguments_without_index_are_numbered_in_order():
    src = HEAD + """
kernel void add_arrays(device const float* inA, device const float* inB, device float* result,
                       uint index [[thread_position_in_grid]]) {
    result[index] = inA[index] + inB[index];
}
kernel void mixed(device float* a, device float* b [[buffer(0)]], constant uint& n,
                  uint i [[thread_position_in_grid]]) { a[i] = b[i] + n; }
"""
    tr = translate(src, "apple_sample.metal")
    k = {e.name: e.params for e in tr.kernels}
    assert k["add_arrays"] == [("buffer", "0"), ("buffer", "1"), ("buffer", "2"), ("id", "kIdThreadPosInGrid")]
    assert k["mixed"] == [("buffer", "1"), ("buffer", "0"), ("buffer", "2"), ("id", "kIdThreadPosInGrid")]


@pytest.mark.parametrize("params,needle", [
    # Types Apple's compiler rejects for position/index attributes (MSL: uint/ushort, vectors only for positions).
    ("int i [[thread_position_in_grid]]", "is declared 'int'"),
    ("uint2 i [[thread_index_in_threadgroup]]", "uint or ushort only"),
    # Vector-typed positions and sizes must agree in their number of components.
    ("uint3 g [[threadgroup_position_in_grid]], uint2 t [[thread_position_in_threadgroup]]", "number of components"),
    # Pairs (and the SIMD-group attributes) that MSL requires to share one type.
    ("uint i [[thread_position_in_grid]], ushort n [[threads_per_grid]]", "same type"),
    ("ushort3 t [[thread_position_in_threadgroup]], uint3 n [[threads_per_threadgroup]]", "same type"),
    ("uint lane [[thread_index_in_simdgroup]], ushort sg [[simdgroup_index_in_threadgroup]]", "same type"),
    ("uint2 t [[thread_position_in_threadgroup]], ushort i [[thread_index_in_threadgroup]]", "must be uint"),
])
def test_id_parameter_types_follow_msl_rules(params, needle):
    with pytest.raises(TranslateError) as e:
        translate(HEAD + f"kernel void k(device float* y [[buffer(0)]], {params}) {{}}\n", "ids.metal")
    assert needle in str(e.value) and "ids.metal:3" in str(e.value)


def test_id_parameter_types_msl_accepts():
    # Mixed scalar widths across groups, a scalar next to 3-vectors, ushort SIMD ids with a uint3 grid position.
    src = HEAD + ("kernel void k(device float* y [[buffer(0)]], uint3 tg [[threadgroup_position_in_grid]], "
                  "uint3 tpg [[threadgroups_per_grid]], ushort tid [[thread_index_in_threadgroup]], "
                  "ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]], "
                  "ushort3 t [[thread_position_in_threadgroup]], ushort3 n [[threads_per_threadgroup]]) {}\n")
    assert [k.name for k in translate(src, "ok.metal").kernels] == ["k"]


def test_build_entry_runs_outside_the_package(tmp_path):
    """csrc/sim/meson.build runs the translator as a script with the standard library only (its TranslateError is
    then a stand-in): a kernel file gives C++ and a depfile naming its headers; an error is one line, exit 1."""
    import subprocess
    import sys
    from pathlib import Path
    script = ROOT / "csrc" / "sim" / "translate" / "__main__.py"
    (tmp_path / "h.h").write_text("#define SCALE 2\n")
    (tmp_path / "k.metal").write_text('#include "h.h"\nkernel void k(device float* y [[buffer(0)]]) '
                                      "{ y[0] = SCALE; }\n")
    out, dep = tmp_path / "k.cpp", tmp_path / "k.d"
    p = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "k.metal"), "-o", str(out),
                        "--depfile", str(dep)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "y[0] = 2;" in out.read_text() and "fasim_info_0" in out.read_text()
    assert str(tmp_path / "h.h") in dep.read_text()
    (tmp_path / "bad.metal").write_text("kernel int k() { return 0; }\n")
    p = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "bad.metal"), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "bad.metal:1" in p.stderr, p.stderr
