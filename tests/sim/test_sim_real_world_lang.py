"""The language of real attention kernels from other projects (issue 19 section 2: MLX's sdpa_vector and steel
attention, llama.cpp's flash_attn_ext), each feature in a kernel of our own (sim_cases/lang/matrix_packed.metal,
builtins_simd.metal, sim_cases/realworld/constructs.metal) checked exactly against NumPy or hand-computed values:
matrix types, packed vectors, Apple's `__metal_*` builtins, the math and SIMD-group functions those files call,
address-space overloads, the conditional operator with half operands, GNU range designators, translate(kernel=)."""

import importlib

import numpy as np
import pytest

sim = pytest.importorskip("flash_attn_cy.sim")
if sim.find_clang() is None:
    pytest.skip("simulating a kernel file needs clang++ for its trust check (not found)", allow_module_level=True)
translate = importlib.import_module("flash_attn_cy.sim.translate")
from flash_attn_cy.sim.translate import space_overloads  # noqa: E402
from _paths import SIM_CASES  # noqa: E402

LANG = SIM_CASES / "lang"
REAL = SIM_CASES / "realworld"  # kernels the strict check cannot take (see constructs.metal)
F32 = np.float32


def test_matrix_types_construct_index_and_multiply_as_msl_defines():
    x = np.arange(1, 37, dtype=F32) * F32(0.25) - 3
    out = sim.run(LANG / "matrix_packed.metal", "matrix_ops", 1, 1, {0: x, 1: np.zeros(119, F32)},
                  schedules=1).buffers[1]
    a = x[:16].reshape(4, 4).T.astype(np.float64)  # column-major: a[r, c] = x[c*4 + r]
    b = x[16:32].reshape(4, 4).T.astype(np.float64)
    v = x[32:36].astype(np.float64)
    col = lambda m: m.T.reshape(-1)  # noqa: E731  (back to column-major order)
    np.testing.assert_array_equal(out[0:16], col(a))
    np.testing.assert_array_equal(out[16:32], col(2 * a))
    np.testing.assert_allclose(out[32:48], col(a @ b), rtol=1e-6)
    np.testing.assert_allclose(out[48:52], a @ v, rtol=1e-6)
    np.testing.assert_allclose(out[52:56], v @ a, rtol=1e-6)
    np.testing.assert_array_equal(out[56:72], col(a.T))
    np.testing.assert_array_equal(out[72:88], col(3 * np.eye(4)))
    np.testing.assert_array_equal(out[88:104], col((a + b) - 2 * a))
    np.testing.assert_array_equal(out[104:112], x[:8].astype(np.float16).astype(F32))
    # sizes (MSL Tables 2.4 and 2.3): float4x4 64, half4x4 32, half2x4 16, float3x3 48 (3 padded columns),
    # packed_float3 12, packed_char4 4; a packed half4 is aligned like one half
    assert list(out[112:119]) == [64, 32, 16, 48, 12, 4, 2]


def test_packed_char4_blocks_dequantise_through_float4x4_and_half4x4():
    blk = np.dtype([("d", "<f2"), ("qs", "i1", 32)])
    assert blk.itemsize == 34  # so the packed_char4 reads are 2-byte aligned, as in llama.cpp's block_q8_0
    rng = np.random.default_rng(0)
    blocks = np.zeros(2, blk)
    blocks["d"] = [0.5, -0.125]
    blocks["qs"] = rng.integers(-128, 128, (2, 32))
    p3 = np.arange(12, dtype=F32) + 1
    res = sim.run(LANG / "matrix_packed.metal", "packed_dequant", 1, 16,
                  {0: blocks.view(np.uint8), 1: np.zeros(64, np.float16), 2: p3}, schedules=1)
    assert res.faults == []
    got = res.buffers[1].reshape(16, 4)
    for t in range(16):
        b = blocks[t // 8]
        q4 = b["qs"].reshape(8, 4)[t % 8]  # column 0 of reg_f: packed_char4 number (t % 8)
        np.testing.assert_array_equal(got[t], (q4.astype(F32) * F32(b["d"])).astype(np.float16))
    np.testing.assert_array_equal(res.buffers[2], np.concatenate([3 * p3[:12]]))


def test_simd_shuffle_and_fill_rotate_and_prefix_products():
    x = np.arange(32, dtype=F32) + 1
    f = -(np.arange(32, dtype=F32) + 101)
    out = sim.run(LANG / "builtins_simd.metal", "simd_permutes", 1, 32, {0: np.concatenate([x, f]),
                  1: np.zeros(13 * 32, F32)}, schedules=1).buffers[1].reshape(13, 32)
    lane = np.arange(32)

    def fill_up(d, m):
        base, idx = lane - lane % m, lane % m - d
        return np.where(idx >= 0, x[base + np.maximum(idx, 0)], f[base + (idx + m) % m])

    def fill_down(d, m):
        base, idx = lane - lane % m, lane % m + d
        return np.where(idx < m, x[base + np.minimum(idx, m - 1)], f[base + idx % m])

    np.testing.assert_array_equal(out[0], fill_up(3, 32))
    np.testing.assert_array_equal(out[1], fill_down(5, 32))
    np.testing.assert_array_equal(out[2], fill_up(2, 8))
    np.testing.assert_array_equal(out[3], fill_down(3, 16))
    np.testing.assert_array_equal(out[4], x[(lane - 7) % 32])
    np.testing.assert_array_equal(out[5], x[(lane + 4) % 32])
    xp = np.where(lane < 8, x, 1).astype(np.float64)
    np.testing.assert_array_equal(out[6], np.cumprod(xp))
    np.testing.assert_array_equal(out[7], np.concatenate([[1], np.cumprod(xp)[:-1]]))
    np.testing.assert_array_equal(out[8], fill_up(1, 4))
    assert (out[9] == x.sum()).all()
    np.testing.assert_array_equal(out[10], x[lane ^ 5])
    np.testing.assert_array_equal(out[11], lane * 100 + 32)
    xor = np.bitwise_xor.reduce(x.view(np.uint32))
    assert (out[12].view(np.uint32) == xor).all()


def test_math_functions_and_builtins_of_mlx_bf16_math():
    rng = np.random.default_rng(1)
    a, b, c = (rng.uniform(-3, 3, 8).astype(F32) for _ in range(3))
    t = rng.uniform(-0.9, 0.9, 8).astype(F32)
    a[0], b[0] = 2.0, 2.0  # nextafter towards an equal value, sinpi of an integer
    res = sim.run(LANG / "builtins_simd.metal", "math_ext", 1, 8, {0: np.concatenate([a, b, c, t]),
                  1: np.zeros(20 * 8, F32), 2: np.zeros(16, np.int32)}, schedules=1)
    assert res.faults == []
    out = res.buffers[1].reshape(20, 8).astype(np.float64)
    A, B, C, T = (v.astype(np.float64) for v in (a, b, c, t))
    np.testing.assert_allclose(out[0], np.arccosh(1 + A * A), rtol=2e-6)
    np.testing.assert_allclose(out[1], np.arcsinh(A), rtol=2e-6)
    np.testing.assert_allclose(out[2], np.arctanh(T), rtol=2e-6)
    np.testing.assert_allclose(out[3], np.sin(np.pi * A), atol=2e-6)
    assert out[3][0] == 0.0  # sinpi of an integer is exactly 0
    np.testing.assert_allclose(out[4], np.cos(np.pi * A), atol=2e-6)
    np.testing.assert_allclose(out[5], np.tan(np.pi * T / 4), rtol=2e-6)
    stack = np.stack([A, B, C])
    np.testing.assert_array_equal(out[6], stack.max(0))
    np.testing.assert_array_equal(out[7], stack.min(0))
    np.testing.assert_array_equal(out[8], np.median(stack, 0))
    np.testing.assert_array_equal(out[9], np.nextafter(a, b))
    np.testing.assert_array_equal(out[10], np.copysign(a, b))
    np.testing.assert_array_equal(out[11], np.ldexp(a, np.arange(8) - 3))
    m, e = np.frexp(a)
    np.testing.assert_array_equal(out[12], m)
    np.testing.assert_array_equal(res.buffers[2][:8], e)
    frac, ip = np.modf(a)
    np.testing.assert_array_equal(out[13], frac)
    np.testing.assert_array_equal(out[14], ip)
    i = np.arange(8)
    s = np.sort(np.stack([i, np.full(8, 5), np.full(8, 3)]), 0)
    np.testing.assert_array_equal(res.buffers[2][8:], s[2] * 100 + s[0] * 10 + s[1])
    v4 = np.maximum(0, np.stack([a, b]))
    w4 = np.minimum(np.stack([c, t]), F32(0.5))
    np.testing.assert_allclose(out[15], v4[0] + v4[1] * 10 + w4[0] * 100 + w4[1] * 1000, rtol=1e-6)
    np.testing.assert_allclose(out[16], np.exp(A), rtol=2e-7)  # __METAL_PRECISE_MATH__: single-precision exp
    np.testing.assert_array_equal(out[17], np.abs(a) + np.fmax(a, b))
    np.testing.assert_allclose(out[18], A * B + C + np.median(stack, 0), rtol=1e-6)
    np.testing.assert_allclose(out[19], np.abs(A) ** B + 4 * A, rtol=1e-6)


def test_new_case_kernels_pass_the_strict_check():
    bad = [r for r in sim.check_files([str(LANG / "matrix_packed.metal"), str(LANG / "builtins_simd.metal")])
           if not r.ok]
    assert not bad, "\n".join(r.message for r in bad)


def test_constructs_of_mlx_and_llama_cpp_kernels():
    h = (np.arange(32) * 0.75 - 7).astype(np.float16)
    dp = np.array([1.0, 2.0], F32)
    res = sim.run(REAL / "constructs.metal", "constructs", 1, 32,
                  {0: np.zeros(144, F32), 1: dp, 3: h}, {2: np.int32(77)}, schedules=1)
    assert res.faults == []
    out = res.buffers[0]
    # pair_t(1, 2) += 3 -> sum 6; the device pair (1, 2) += 10 -> 13; the threadgroup copy of p -> 6
    assert out[0] == 6 * 1000 + 13 + 6 * 100
    assert res.buffers[1][0] == 11
    assert out[1] == 4 * 10 + 2          # operator float2() of the thread-qualified overload
    assert out[2] == 2.0 + 8.0           # the program-scope table through a `constant float *`
    assert out[3] == 4 * 1.5 - 2 * 2.0   # [0 ... 3] = 1.5, [6 ... 7] = -2, the rest 0
    assert out[4] == 77                  # the kernel's buffer `blocks`, not the function constant
    assert out[5] == 7.5                 # elem_of<device const float *>::type, remove_addrspace_t<float>
    assert out[6] == 42                  # reinterpret_cast<thread float2 &> wrote the matrix's elements
    assert out[7] == 1 and out[8] == 0
    lane = np.arange(32)
    np.testing.assert_array_equal(out[16:48], np.where(lane < 31, (lane + 1) % 2 == 1, True))
    hf = h.astype(F32)
    np.testing.assert_array_equal(out[48:80], np.where(lane % 2 == 0, hf, 0))
    np.testing.assert_array_equal(out[80:112], np.where(lane < 16, hf, hf / F32(3)))  # float, not rounded to half
    np.testing.assert_array_equal(out[112:144], np.where(lane < 4, 2 * hf, 0.5))


def test_translation_of_the_constructs():
    code = translate.translate_file(str(REAL / "constructs.metal")).code
    assert "::fasim::fill_range(arr, 0, 3, 1.5f); ::fasim::fill_range(arr, 6, 7, -2.0f)" in code
    assert code.count("float sum() const") == 1 and code.count("add_to(") == 3  # one definition each, two calls
    assert "using ::metal::simd_shuffle_down;" in code
    assert "::fasim::cond_pick((lane % 2 == 0 )" in code
    assert "pick(const float *t, int i)" in code  # `constant` pointee: const


def test_overloads_on_address_space_with_different_bodies_are_refused():
    src = """#include <metal_stdlib>
struct s { float v; float get() thread { return v; } float get() device { return v + 1; } };
kernel void k(device float *o [[buffer(0)]]) { s x{1}; o[0] = x.get(); }
"""
    with pytest.raises(translate.TranslateError, match="only in address spaces but has another body"):
        translate.translate(src, "as.metal")


def test_translate_one_kernel_of_a_file():
    src = """#include <metal_stdlib>
template <typename T> kernel void f(device T *o [[buffer(0)]]) { o[0] = T(1); }
template [[host_name("f_float")]] kernel void f<float>(device float *);
template [[host_name("f_half")]] kernel void f<half>(device half *);
"""
    both = translate.translate(src, "two.metal")
    one = translate.translate(src, "two.metal", kernel="f_half")
    assert [k.name for k in both.kernels] == ["f_float", "f_half"] and [k.name for k in one.kernels] == ["f_half"]
    assert "f<float>" not in one.code  # the other instantiation is gone, so its template is not instantiated
    with pytest.raises(translate.TranslateError, match="no kernel named 'g'"):
        translate.translate(src, "two.metal", kernel="g")
    res = sim.run(src, "f_half", 1, 1, {0: np.zeros(1, np.float16)}, schedules=1, only_kernel=True)
    assert res.faults == [] and res.buffers[0][0] == 1


def test_metal_functions_merged_into_file_scope_overloads_exist():
    names = sorted(space_overloads.METAL_FUNCTIONS)
    src = "#include <metal_stdlib>\nusing namespace metal;\n" + "".join(
        f"namespace t{i} {{ using ::metal::{n}; }}\n" for i, n in enumerate(names)) + \
        "kernel void k(device float *o [[buffer(0)]]) { o[0] = 1; }\n"
    assert sim.run(src, "k", 1, 1, {0: np.zeros(1, F32)}, schedules=1).buffers[0][0] == 1
