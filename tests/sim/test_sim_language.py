"""The language real kernels use (issue 19 section 2): function constants (MSL specification §5.8.1), the
preprocessor (own headers, #define/#if, macro-generated kernels, -D), templates instantiated under [[host_name]],
[[max_total_threads_per_threadgroup]] enforced at launch, and [[threadgroup(n)]] arguments. Each feature has a kernel of its own in
sim_cases/lang/ whose results are checked here, in Python and through the command line."""

import ctypes
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sim = pytest.importorskip("flash_attn_cy.sim")
if sim.find_clang() is None:
    pytest.skip("simulating a kernel file needs clang++ for its trust check (not found)", allow_module_level=True)
from flash_attn_cy.sim import _run, trust  # noqa: E402
from _paths import SIM_CASES  # noqa: E402

LANG = SIM_CASES / "lang"
FC = LANG / "function_constants.metal"


def _fc_expected(x, repeat, scale, bias=None, offset=None, window=None):
    y = scale * x.astype(np.float64) * repeat
    if bias is not None:
        y += bias
    if offset is not None:
        y += offset
    if window is not None:
        i = np.arange(len(x))
        y[(i < window[0]) | (i >= window[1])] = 0
    y[-1] = 2 * repeat
    return y


@pytest.mark.parametrize("consts,bias,offset,window", [
    ({"has_bias": False, "repeat_count": 3, "scale": 0.5}, None, None, None),
    ({0: True, "1": 2, "scale": 1.5, "offset_h": 0.25}, True, 0.25, None),
    ({"has_bias": True, "repeat_count": 1, 2: -1.0, 10: (3, 9)}, True, None, (3, 9)),
])
def test_function_constants_specialise_the_kernel(consts, bias, offset, window):
    x = np.arange(16, dtype=np.float32) - 4
    b = np.linspace(-1, 1, 16).astype(np.float32)
    bufs = {0: x, 1: np.zeros(16, np.float32)}
    if bias:
        bufs[2] = b
    res = sim.run(FC, "fc_scale", 1, 16, bufs, schedules=1, constants=consts)
    assert res.faults == []
    named = {("has_bias" if k in (0, "0") else "repeat_count" if k in (1, "1") else "scale" if k in (2, "2")
              else "window" if k == 10 else k): v for k, v in consts.items()}
    want = _fc_expected(x, named["repeat_count"], named["scale"], b if bias else None, offset, window)
    np.testing.assert_allclose(res.buffers[1], want, rtol=1e-6)


def test_gated_buffer_is_required_only_when_its_constant_is_true():
    x = np.ones(8, np.float32)
    res = sim.run(FC, "fc_scale", 1, 8, {0: x, 1: np.zeros(8, np.float32)}, schedules=1,
                  constants={"has_bias": True, "repeat_count": 1, "scale": 1.0})
    assert [f.kind for f in res.faults] == ["error"] and "[[buffer(2)]] is not bound" in res.faults[0].message


def test_reading_a_constant_without_a_value_is_a_fault_at_the_use():
    res = sim.run(FC, "fc_required", 1, 4, {0: np.zeros(4, np.int32)}, schedules=1)
    assert [f.kind for f in res.faults] == ["error"]
    msg = res.faults[0].message
    assert "'repeat_count' (index 1" in msg and "no value" in msg and "function_constants.metal:40" in msg, msg
    # a gate without a value: the launch is refused before any thread runs
    res = sim.run(FC, "fc_scale", 1, 4, {0: np.ones(4, np.float32), 1: np.zeros(4, np.float32)}, schedules=1,
                  constants={"repeat_count": 1, "scale": 1.0})
    assert res.faults and "has_bias" in res.faults[0].message and "no value" in res.faults[0].message


def test_locals_shadowing_a_function_constant_follow_cpp_scoping():
    res = sim.run(FC, "fc_shadow", 1, 2, {0: np.zeros(2, np.int32)}, schedules=1, constants={"repeat_count": 3})
    assert res.faults == [] and res.buffers[0].tolist() == [3 * 10001 + 1107] * 2


@pytest.mark.parametrize("consts,needle", [
    ({"nope": 1}, "not a function constant"),
    ({"repeat_count": 2**31}, "out of range"),
    ({"repeat_count": 1.5}, "integers"),
    ({"has_bias": 2}, "true/false"),
    ({"window": 3}, "takes 2 value"),
    ({"repeat_count": 1, 1: 2}, "given twice"),
])
def test_bad_constant_values_are_errors_naming_the_constant(consts, needle):
    with pytest.raises(ValueError, match=needle):
        sim.run(FC, "fc_required", 1, 1, {0: np.zeros(1, np.int32)}, schedules=1, constants=consts)


def test_runtime_entry_point_checks_type_and_ignores_unknown_constants():
    """The C entry point (what the dispatch plan calls): (index, name, MTLDataType, bytes) per value; a value of
    another type than declared is refused, one no declaration matches is ignored (as Metal does)."""
    lib, fcs = _run._module_for(FC.read_text(), str(FC), (), ())

    def launch(values):
        y = np.zeros(2, np.int32)
        msg = ctypes.create_string_buffer(4096)
        args = _run._constant_args(values)
        n = lib.fasim_launch(b"fc_required", (ctypes.c_uint * 3)(1, 1, 1), (ctypes.c_uint * 3)(2, 1, 1), 1,
                             (ctypes.c_int * 1)(0), (ctypes.c_void_p * 1)(y.ctypes.data), None,
                             (ctypes.c_size_t * 1)(y.nbytes), (ctypes.c_int * 1)(1), 0, None, None, None, 1, 1, 1, 0, 0, 0,
                             msg, len(msg), None, *args[:6], 0, None, None)
        return n, msg.value.decode(), y

    n, msg, y = launch([(1, "", 29, np.int32(40).tobytes()), (77, "unused", 53, b"\x01")])
    assert n == 0, msg
    assert y.tolist() == [40, 41]
    n, msg, y = launch([(-1, "repeat_count", 29, np.int32(5).tobytes())])  # by name
    assert n == 0 and y.tolist() == [5, 6], msg
    n, msg, _ = launch([(1, "", 3, np.float32(1).tobytes())])  # float for an int constant
    assert n == 1 and "given a value of type float" in msg and "declared int" in msg, msg
    n, msg, _ = launch([(1, "", 29, b"\x01\x00")])
    assert n == 1 and "takes 4 bytes, given 2" in msg, msg


def test_function_constant_kernels_pass_the_trust_rules_and_the_strict_check():
    source = FC.read_text()
    tr = sim.translate(source, str(FC))
    assert [(f.name, f.index, f.type, f.mtl_type) for f in tr.function_constants] == [
        ("has_bias", 0, "bool", 53), ("repeat_count", 1, "int", 29), ("scale", 2, "float", 3),
        ("offset_h", 3, "half", 16), ("window", 10, "ushort2", 42)]
    trust.check_translation(tr, source, str(FC), [])
    trust.check_compiled(tr.code, str(FC), sim.find_clang())
    assert sim.check_file(str(FC)).ok


@pytest.mark.parametrize("body,needle", [
    # Metal specialises function constants after the front end: no template arguments, no array sizes
    ("template <int N> inline int twice() { return 2 * N; }\n"
     "kernel void k(device int* y [[buffer(0)]]) { y[0] = twice<n_fc>(); }", "twice"),
    ("kernel void k(device int* y [[buffer(0)]]) { int a[n_fc]; a[0] = 1; y[0] = a[0]; }", "n_fc"),
    ("kernel void k(device int* y [[buffer(0)]]) { n_fc = 3; y[0] = 1; }", "n_fc"),
])
def test_function_constants_are_not_compile_time_constants_in_the_strict_check(tmp_path, body, needle):
    f = tmp_path / "fc_misuse.metal"
    f.write_text("#include <metal_stdlib>\nusing namespace metal;\nconstant int n_fc [[function_constant(0)]];\n"
                 + body + "\n")
    r = sim.check_file(str(f))
    assert not r.ok and needle in r.message, r.message


@pytest.mark.parametrize("body,needle", [
    ("constant int n_fc2 [[function_constant(0)]];", "share index 0"),
    ("kernel void k(device int* y [[buffer(0)]], device int* z [[buffer(1), function_constant(n_fc)]]) {}",
     "bool function constant"),
])
def test_function_constant_misuse_is_a_translation_error(body, needle):
    with pytest.raises(sim.TranslateError, match=needle):
        sim.translate("#include <metal_stdlib>\nconstant int n_fc [[function_constant(0)]];\n" + body + "\n",
                      "fc.metal")


def test_macros_own_headers_and_macro_generated_kernels():
    x = np.arange(64, dtype=np.float32)
    names = sorted(k.name for k in sim.translate_file(str(LANG / "macros.metal")).kernels)
    assert names == ["pp_report", "tile_sums_float_narrow", "tile_sums_half_narrow"]
    res = sim.run(LANG / "macros.metal", "tile_sums_float_narrow", 1, 4, {0: x, 1: np.zeros(4, np.float32)},
                  {2: np.uint32(2)}, schedules=1)
    assert res.faults == []
    np.testing.assert_array_equal(res.buffers[1], 2 * x.reshape(-1, 4)[:4].sum(1))
    # -D TILE=8 (through the header's #ifndef and #if) renames the generated kernels and changes the tile
    res = sim.run(LANG / "macros.metal", "tile_sums_half_wide", 1, 4,
                  {0: x.astype(np.float16), 1: np.zeros(4, np.float32)}, {2: np.uint32(1)}, schedules=1,
                  defines={"TILE": 8, "SIM_FLAG": 7})
    assert res.faults == []
    np.testing.assert_array_equal(res.buffers[1], x.reshape(-1, 8)[:4].sum(1))
    res = sim.run(LANG / "macros.metal", "pp_report", 1, 1, {0: np.zeros(3, np.int32)}, schedules=1,
                  defines=["TILE=8", "SIM_FLAG=7"])
    assert res.faults == [] and res.buffers[0].tolist() == [7, 8, 310]


def test_host_name_forms_and_thread_limits():
    p = LANG / "host_name_templates.metal"
    x = np.arange(32, dtype=np.float32)
    for name, dt, n in (("axpy_f32_n1", np.float32, 1), ("axpy_f16_n2", np.float16, 2), ("axpy_f32_n4", np.float32, 4)):
        res = sim.run(p, name, 1, 32, {0: x.astype(dt), 1: np.ones(32, dt)}, {2: np.float32(2)}, schedules=1)
        assert res.faults == [], name
        np.testing.assert_array_equal(res.buffers[1], (2 * x + 1 + n).astype(dt))
    # [[max_total_threads_per_threadgroup(N * 32)]] of the template, N = 1: 32 threads pass, 64 are refused
    res = sim.run(p, "axpy_f32_n1", 1, 64, {0: np.zeros(64, np.float32), 1: np.ones(64, np.float32)},
                  {2: np.float32(2)}, schedules=1)
    assert [f.kind for f in res.faults] == ["error"]
    assert "64 threads exceeds the kernel's [[max_total_threads_per_threadgroup(32)]]" in res.faults[0].message
    # N = 4: 128 threads are fine
    res = sim.run(p, "axpy_f32_n4", 1, 128, {0: np.zeros(128, np.float32), 1: np.ones(128, np.float32)},
                  {2: np.float32(2)}, schedules=1)
    assert res.faults == []
    res = sim.run(p, "limited", (2, 1), (8, 8), {0: np.zeros(128, np.uint32)}, schedules=1)
    assert res.faults == []
    res = sim.run(p, "limited", 1, (8, 9), {0: np.zeros(72, np.uint32)}, schedules=1)
    assert res.faults and "72 threads exceeds" in res.faults[0].message and "(64)" in res.faults[0].message


def test_cli_constants_and_defines(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "flash_attn_cy.sim", *args], capture_output=True, text=True,
                              timeout=300)

    np.save(tmp_path / "x.npy", np.arange(8, dtype=np.float32))
    p = cli("run", str(FC), "--kernel", "fc_scale", "--grid", "1", "--threadgroup", "8",
            "--buffer", f"0={tmp_path / 'x.npy'}", "--buffer", "1=zeros:float32:8", "--constant", "has_bias=false",
            "--constant", "1=2", "--constant", "scale=0.5", "--schedules", "1", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "buffer1.npy"), _fc_expected(np.arange(8), 2, 0.5))
    p = cli("run", str(LANG / "macros.metal"), "--kernel", "pp_report", "--grid", "1", "--threadgroup", "1",
            "--buffer", "0=zeros:int32:3", "-D", "SIM_FLAG=5", "-D", "TILE=8", "--schedules", "1",
            "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert np.load(tmp_path / "buffer0.npy").tolist() == [5, 8, 310]
    for bad, needle in ((["--constant", "repeat_count"], "NAME=VALUE"), (["--constant", "repeat_count=x"], "not true"),
                        (["--constant", "bogus=1"], "not a function constant")):
        p = cli("run", str(FC), "--kernel", "fc_required", "--grid", "1", "--threadgroup", "1",
                "--buffer", "0=zeros:int32:1", *bad)
        assert p.returncode == 2 and needle in p.stderr, p.stdout + p.stderr
    p = cli("check", "-D", "TILE=8", str(LANG / "macros.metal"))
    assert p.returncode == 0, p.stdout + p.stderr


def test_threadgroup_memory_arguments():
    p = LANG / "threadgroup_memory.metal"
    x = np.arange(128, dtype=np.float32)
    res = sim.run(p, "reverse_blocks", 2, 64, {0: x, 1: np.zeros(128, np.float32), 2: np.zeros(2, np.float32)},
                  schedules=3, threadgroup_memory={0: 256, 1: 16})
    assert res.faults == []
    np.testing.assert_array_equal(res.buffers[1], np.concatenate([x[:64][::-1], x[64:][::-1]]))
    np.testing.assert_array_equal(res.buffers[2], [x[:64].sum(), x[64:].sum()])
    bufs = {0: x, 1: np.zeros(128, np.float32), 2: np.zeros(2, np.float32)}
    for lengths, needle in (({0: 256}, "[[threadgroup(1)]] has no length"),
                            ({0: 256, 1: 8}, "multiple of 16"),
                            ({0: 256, 1: 16, 2: 16}, "no [[threadgroup(2)]] argument"),
                            ({0: 32768, 1: 16}, "32 KiB")):
        res = sim.run(p, "reverse_blocks", 2, 64, bufs, schedules=1, threadgroup_memory=lengths)
        assert res.faults and needle in res.faults[0].message, (lengths, res.faults)
    # a length too small for what the kernel indexes: out of bounds, as on the GPU's guard-less memory it would be
    res = sim.run(p, "reverse_blocks", 2, 64, bufs, schedules=1, threadgroup_memory={0: 128, 1: 16})
    assert res.faults and res.faults[0].kind == "out-of-bounds", res.faults
    # and through the command line
    p2 = subprocess.run([sys.executable, "-m", "flash_attn_cy.sim", "run", str(p), "--kernel", "reverse_blocks",
                         "--grid", "1", "--threadgroup", "32", "--buffer", "0=zeros:float32:32",
                         "--buffer", "1=zeros:float32:32", "--buffer", "2=zeros:float32:1",
                         "--threadgroup-memory", "0=128", "--threadgroup-memory", "1=16", "--schedules", "1"],
                        capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stdout + p2.stderr


def test_type_traits_numeric_limits_and_global_vector_names():
    res = sim.run(LANG / "type_traits.metal", "traits_report", 1, 1, {0: np.zeros(8, np.float32)}, schedules=1)
    assert res.faults == []
    np.testing.assert_array_equal(res.buffers[0], [-65504.0, np.float32(3.3895313892515355e38), 2.0 ** -10,
                                                   2.0 ** -126, 1, 1, 1, 4])
