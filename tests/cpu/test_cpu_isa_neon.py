"""The Arm NEON kernel set of the CPU backend (csrc/cpu/*_neon.cpp), on an x86-64 machine: the C++ core and
tests/cpu/cpu_abi_driver.cpp are cross-compiled for AArch64 (Debian's g++-aarch64-linux-gnu) and run under user-mode
emulation (qemu-aarch64), forward and decode, against the float64 reference with the project's tolerance rule.

On an AArch64 machine the whole suite runs on the NEON kernels natively instead (the `isa` fixture's "auto"), so this
file is for the x86-64 machines the project is built on. Emulation checks the arithmetic, never the speed: the NEON
kernels' speed on real Arm hardware has not been measured.

Skips with a message when the cross compiler or the emulator is missing (.ci/apt-deps installs both on x86-64).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import platform
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from _tolerance import assert_close_to_ref
from conftest import DTYPES

ref = pytest.importorskip("flash_attn_cy.reference")

from _paths import ROOT, TESTS  # noqa: E402
CXX = os.environ.get("FLASH_ATTN_CY_AARCH64_CXX", "aarch64-linux-gnu-g++")
QEMU = "qemu-aarch64"
DTYPE_CODE = {"fp32": 0, "fp16": 1, "bf16": 2}

pytestmark = pytest.mark.skipif(
    platform.machine() in ("aarch64", "arm64") or not shutil.which(CXX) or not shutil.which(QEMU),
    reason=f"needs an x86-64 host with {CXX} and {QEMU} (Debian: g++-aarch64-linux-gnu, qemu-user; .ci/apt-deps "
           "installs them); on AArch64 the rest of the suite runs the NEON kernels natively")


def _core_sources() -> list[Path]:
    """Every C++ source of the portable core (the C ABI, checks, CPU backend, plan, simulator runtime), as meson
    builds it into fa_core; the Metal shim is not part of a Linux build."""
    # csrc/sim/c_api.cpp and counters.cpp go only into simulator modules built at run time (their entry points and
    # the work counters' instrumentation hooks), never into the core library
    module_only = {ROOT / "csrc" / "sim" / "c_api.cpp", ROOT / "csrc" / "sim" / "counters.cpp"}
    srcs = sorted(p for p in (ROOT / "csrc").rglob("*.cpp") if "tools" not in p.parts and p not in module_only)
    return srcs + [TESTS / "cpu" / "cpu_abi_driver.cpp"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    """The AArch64 driver, built once per session (objects in parallel, one per core)."""
    srcs = _core_sources()
    digest = hashlib.sha256()
    for s in srcs + sorted((ROOT / "csrc").rglob("*.h")) + sorted((ROOT / "kernels").glob("*.h")):
        digest.update(s.read_bytes())
    out = tmp_path_factory.mktemp("aarch64") / f"driver-{digest.hexdigest()[:12]}"
    flags = ["-std=c++17", "-O2", "-DNDEBUG", "-pthread", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'kernels'}"]

    def compile_one(src: Path) -> Path:
        obj = out.parent / (src.relative_to(ROOT).as_posix().replace("/", "_") + ".o")
        r = subprocess.run([CXX, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert r.returncode == 0, f"{CXX} {src}:\n{r.stderr[-3000:]}"
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objs = list(pool.map(compile_one, srcs))
    r = subprocess.run([CXX, "-static", "-pthread", *map(str, objs), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def run_driver(driver: Path, tmp_path: Path, q, k, v, *, dtype: str, window=(-1, -1), scale=None, softcap=0.0,
               isa="neon", env_extra=None, cpu="max"):
    """(out, lse, description) of one forward on the emulated AArch64 CPU backend. cpu: the emulated CPU model
    ("max": every extension qemu has, the bf16 one (BFDOT) included; "cortex-a72": Armv8.0, no bf16)."""
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    header = b"FAJOB1\0\0" + struct.pack("<10i", DTYPE_CODE[dtype], b, sq, sk, hq, hkv, d, window[0], window[1], 2)
    header += struct.pack("<2d", scale, softcap)
    job, res = tmp_path / "job.bin", tmp_path / "out.bin"
    job.write_bytes(header + b"".join(np.ascontiguousarray(x).tobytes() for x in (q, k, v)))
    env = {**os.environ, "FLASH_ATTN_CY_CPU_ISA": isa, "QEMU_CPU": cpu, **(env_extra or {})}
    r = subprocess.run([QEMU, str(driver), str(job), str(res)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    raw = res.read_bytes()
    nbytes = q.size * q.dtype.itemsize
    out = np.frombuffer(raw[:nbytes], dtype=q.dtype).reshape(q.shape)
    lse = np.frombuffer(raw[nbytes:], dtype=np.float32).reshape(b, hq, sq)
    return out, lse, r.stdout.strip()


def _kernel_set(description: str) -> str:
    # "C++ FlashAttention-2, neon (...) kernels, 2 threads": the first word after the comma (csrc/cpu/isa_dispatch.cpp),
    # "neon-bf16" where the CPU has the bf16 extension
    return description.split(", ", 1)[1].split()[0]


def _inputs(rng, shape_q, shape_kv, dtype, scale=1.0):
    dt = DTYPES[dtype]
    return tuple((rng.standard_normal(s) * scale).astype(dt) for s in (shape_q, shape_kv, shape_kv))


def _check(out, lse, q, k, v, dtype, **kw):
    o64, lse64 = ref.attention_ref(q, k, v, return_lse=True, **kw)
    o_lowp = ref.attention_ref(q, k, v, compute_dtype=DTYPES[dtype], **kw)
    assert_close_to_ref(out, o64, o_lowp, what=f"out ({dtype})")
    finite = np.isfinite(np.asarray(lse64, dtype=np.float64))
    np.testing.assert_allclose(lse[finite], np.asarray(lse64)[finite], rtol=2e-5, atol=2e-5)
    assert np.all(np.isposinf(lse[~finite]))


# (batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, headdim, window): prefill tiles (lane layout, several K/V tiles,
# ragged tails), GQA decode (the split-K decode kernels: <= 4 query rows per KV head), causal and sliding windows,
# head dims that are not multiples of 4 (the NEON tail loads).
CASES = [
    (1, 70, 130, 4, 2, 64, (-1, -1)),
    (2, 65, 200, 2, 2, 128, (-1, 0)),
    (1, 130, 130, 2, 1, 33, (16, 0)),
    (2, 1, 300, 8, 2, 40, (-1, -1)),
    (1, 4, 1100, 4, 1, 96, (-1, -1)),
    (1, 3, 77, 6, 3, 7, (-1, 0)),
]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "bf16-no-bfdot"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}sq{}sk{}h{}-{}d{}w{}_{}".format(*c[:6], *c[6]))
def test_neon_forward_and_decode_match_reference(driver, tmp_path, rng, dtype, case):
    """Every case on the emulated "max" CPU (bf16 decode scores by BFDOT), and bf16 once more on a CPU without the
    bf16 extension (cortex-a72: the widening kernels)."""
    cpu = "cortex-a72" if dtype == "bf16-no-bfdot" else "max"
    dtype = dtype.split("-")[0]
    if dtype not in DTYPES:
        pytest.skip("bfloat16 needs ml_dtypes")
    b, sq, sk, hq, hkv, d, window = case
    q, k, v = _inputs(rng, (b, sq, hq, d), (b, sk, hkv, d), dtype)
    out, lse, desc = run_driver(driver, tmp_path, q, k, v, dtype=dtype, window=window, cpu=cpu)
    assert _kernel_set(desc) == ("neon" if cpu == "cortex-a72" else "neon-bf16"), desc
    _check(out, lse, q, k, v, dtype, window_size=window)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_neon_softcap_and_huge_logits(driver, tmp_path, rng, dtype):
    """Softcap, and logits of ~1e8 (softmax_scale 1e8): the NEON exp2 clamps its argument, so nothing overflows."""
    if dtype not in DTYPES:
        pytest.skip("bfloat16 needs ml_dtypes")
    q, k, v = _inputs(rng, (1, 40, 2, 64), (1, 90, 2, 64), dtype)
    out, lse, _ = run_driver(driver, tmp_path, q, k, v, dtype=dtype, softcap=5.0, window=(-1, 0))
    _check(out, lse, q, k, v, dtype, softcap=5.0, causal=True)
    for sq in (40, 1):  # the tile kernels and the decode kernels
        qs = q[:, :sq]
        out, lse, _ = run_driver(driver, tmp_path, qs, k, v, dtype=dtype, scale=1e8)
        _check(out, lse, qs, k, v, dtype, softmax_scale=1e8)
        assert np.isfinite(out.astype(np.float64)).all()


def test_neon_nan_input_reaches_the_output(driver, tmp_path, rng):
    q, k, v = _inputs(rng, (1, 20, 2, 32), (1, 50, 2, 32), "fp32")
    k = k.copy()
    k[0, 7, 1, 3] = np.nan  # every query of head 1 sees key 7
    for sq in (20, 1):
        out, _, _ = run_driver(driver, tmp_path, q[:, :sq], k, v, dtype="fp32")
        assert np.isnan(out[0, :, 1]).all() and np.isfinite(out[0, :, 0]).all()


def test_isa_override_and_detection_on_aarch64(driver, tmp_path, rng):
    """FLASH_ATTN_CY_CPU_ISA=portable forces the portable kernels on AArch64; x86 sets are refused there with the
    reason in the description; FLASH_ATTN_CY_CPU_HIDE=neon makes the CPU look like one without Advanced SIMD."""
    q, k, v = _inputs(rng, (1, 70, 2, 64), (1, 100, 2, 64), "fp32")
    outs = {}
    for isa, env, expect in (("neon", None, "neon-bf16"), ("portable", None, "portable"), ("", None, "neon-bf16"),
                             ("avx512", None, "neon-bf16"), ("", {"FLASH_ATTN_CY_CPU_HIDE": "neon"}, "portable"),
                             ("", {"FLASH_ATTN_CY_CPU_HIDE": "neon-bf16"}, "neon")):
        out, lse, desc = run_driver(driver, tmp_path, q, k, v, dtype="fp32", isa=isa, env_extra=env)
        assert _kernel_set(desc) == expect, (isa, env, desc)
        if isa == "avx512":
            assert "FLASH_ATTN_CY_CPU_ISA=avx512 ignored" in desc, desc
        _check(out, lse, q, k, v, "fp32")
        outs[(isa, expect)] = out
    # the same kernels give the same bits whether chosen by detection or forced
    np.testing.assert_array_equal(outs[("", "neon-bf16")], outs[("neon", "neon-bf16")])
    # fp32 takes the same NEON kernels with or without the bf16 extension
    np.testing.assert_array_equal(outs[("", "neon")], outs[("neon", "neon-bf16")])
    # NEON and portable are different arithmetic (vector exp2 polynomial, other summation order)
    assert not np.array_equal(outs[("neon", "neon-bf16")], outs[("portable", "portable")])


def test_bf16_decode_by_bfdot_matches_the_widening_kernels_closely(driver, tmp_path, rng):
    """BFDOT (bf16 pairs, fp32 sums) and the widening kernels compute the same exact products, summed in another
    order: their decode outputs differ by no more than fp32 rounding noise, far below bf16's resolution."""
    q, k, v = _inputs(rng, (2, 1, 8, 128), (2, 700, 2, 128), "bf16")
    out_dot, _, d1 = run_driver(driver, tmp_path, q, k, v, dtype="bf16", cpu="max")
    out_wide, _, d2 = run_driver(driver, tmp_path, q, k, v, dtype="bf16", cpu="cortex-a72")
    assert _kernel_set(d1) == "neon-bf16" and _kernel_set(d2) == "neon"
    diff = np.abs(out_dot.astype(np.float64) - out_wide.astype(np.float64))
    assert diff.max() <= 2 * 2.0 ** -8 * np.abs(out_wide.astype(np.float64)).max()  # at most a bf16 rounding step
