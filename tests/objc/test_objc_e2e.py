"""End to end without a Mac: the Metal backend's whole host path, with only the GPU replaced.

fa_forward(backend=metal) -> dispatcher -> the real dispatch plan -> the real Objective-C++ shim (objc/*.mm, built
without ARC on the GNU Objective-C runtime) -> the mock Metal of tests/objc/objc_stubs/mock -> the project's real Metal
kernels, run by the Metal simulator when the mock's command buffer commits; outputs and LSE are compared with the CPU
backend. See tests/objc/test_objc_e2e_driver.mm.

It links against the C++ core the build produced (libfa_core.a in a meson build directory under build/: an editable
install, `pip install --no-build-isolation -e .`, or `pip install . -Cbuild-dir=build/ci`), and skips where there is
none (a plain `pip install .` builds in a temporary directory). What it cannot show: that Apple's compiler, Metal and an Apple GPU agree - that is the macOS workflow's job.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _paths import OBJC_STUBS, OBJC_TESTS, ROOT  # noqa: E402
# This file compiles the shim against tests/objc/objc_stubs and runs it on the GNU Objective-C runtime; on macOS the
# real SDK headers clash with those stubs, and the shim is compiled and run for real there (the macOS workflows).
pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="compiles the Metal shim against Linux stub headers; "
                                "macOS builds the real shim instead")


# The C ABI builds each call's plan (csrc/plan) and hands the object to the executor (csrc/fa_backends.h).
HANDOFF_POINTS = ("fa_plan_build_for_device", "fa_sim_execute", "fa_metal_execute")


def _core_library() -> Path | None:
    env = os.environ.get("FA_CORE_LIB")
    if env:
        return Path(env) if Path(env).is_file() else None
    try:  # an editable install rebuilds on import, so the archive matches the sources
        import flash_attn_cy  # noqa: F401
    except ImportError:
        return None
    libs = sorted((ROOT / "build").glob("*/libfa_core.a"), key=lambda p: p.stat().st_mtime)
    return libs[-1] if libs else None


@pytest.fixture(scope="module")
def e2e_exe(tmp_path_factory) -> Path:
    """The driver, built once per module (compiling the shim, the mock and the driver takes a minute)."""
    tmp_path = tmp_path_factory.mktemp("e2e")
    lib = _core_library()
    if lib is None:
        pytest.skip("no libfa_core.a from a meson build directory (needs an editable install)")
    clang = next((c for c in ("clang++-19", "clang++-20", "clang++-18", "clang++") if shutil.which(c)), None)
    gcc = shutil.which("gcc")
    objc_lib = subprocess.run([gcc, "-print-file-name=libobjc.so"], capture_output=True, text=True).stdout.strip() \
        if gcc else ""
    if clang is None or not objc_lib or not Path(objc_lib).is_file():
        pytest.skip("needs clang (apt clang-19) and the GNU Objective-C runtime (apt libobjc-12-dev)")
    objc_dir = Path(objc_lib).parent
    # A thin archive lists its objects relative to the directory `ar` runs in.
    members = subprocess.run(["ar", "t", lib.name], capture_output=True, text=True, cwd=lib.parent).stdout.split()
    objects = [str(lib.parent / m) for m in members if "metal_unavailable" not in m]
    if not members or not all(Path(o).is_file() for o in objects):
        pytest.skip(f"{lib} is not a thin archive whose objects can be linked individually")
    exe = tmp_path / "e2e"
    # AddressSanitizer on the shim, the mock and the driver (the core's objects are not instrumented, but its
    # memcpy/malloc go through ASan's interceptors); leaks are expected without ARC, so leak checks are off.
    cmd = [clang, "-fsanitize=address", "-x", "objective-c++", "-std=c++17", "-fobjc-runtime=gcc", "-fblocks",
           "-DFA_METAL_MRC_EXECUTION_TEST", "-O1", "-Wall", "-Werror",
           f"-I{OBJC_STUBS}", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'kernels'}", f"-I{ROOT / 'objc'}",
           str(ROOT / "objc" / "fa_metal_context.mm"), str(ROOT / "objc" / "fa_metal_execute.mm"),
           str(OBJC_STUBS / "mock" / "metal_mock.mm"),
           str(OBJC_TESTS / "test_objc_e2e_driver.mm"), str(OBJC_TESTS / "e2e_plan_handoff.mm"),
           "-x", "c++", str(ROOT / "objc" / "fa_metal_binding.cpp"),
           # Every object of the core (as the extension's link_whole does: weak scaffold definitions must not
           # shadow the real ones) except metal_unavailable, whose fa_metal_* the shim defines here.
           "-x", "none", *objects, f"-L{objc_dir}", f"-Wl,-rpath,{objc_dir}", "-lobjc", "-pthread",
           # the plan hand-off points between the C ABI and the executors, observed by e2e_plan_handoff.mm
           *(f"-Wl,--wrap={name}" for name in HANDOFF_POINTS), "-o", str(exe)]
    # fa_metal_kernels_embedded.cpp is generated only on macOS: give the shim an empty table, metallib from env.
    embedded = tmp_path / "embedded.cpp"
    embedded.write_text('#include "fa_metal_kernel_source.h"\n'
                        "const fa_embedded_kernel_file fa_embedded_kernel_files[] = {{nullptr, nullptr}};\n"
                        "const int fa_embedded_kernel_file_count = 0;\n"
                        'const char *const fa_metallib_build_path = "";\n')
    cmd[cmd.index("none") - 1:cmd.index("none") - 1] = [str(embedded)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if built.returncode != 0 and "sanitize" in built.stderr:
        cmd.remove("-fsanitize=address")
        built = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-6000:]
    return exe


def test_metal_path_end_to_end(e2e_exe: Path) -> None:
    exe, tmp_path = e2e_exe, e2e_exe.parent
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    run = subprocess.run([str(exe), str(tmp_path / "fa_kernels.metallib")], capture_output=True, text=True,
                         timeout=600, env=env)
    print(run.stdout)
    fails = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert "ERROR: AddressSanitizer" not in run.stderr, run.stderr[-6000:]
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "FAIL" not in run.stdout


def test_plan_built_once_and_handed_to_each_executor(e2e_exe: Path) -> None:
    """Issue 18 items 2 and 6: for a forward (prefill, split-KV decode, with attention probabilities), a backward and
    a KV-cache append, the C ABI builds one plan; the simulator executor and the Metal shim (on the mock Metal) each
    receive that very object, unchanged, run exactly its launches with the constant blocks read from it, and get
    byte-identical plans and bit-identical results for the same call. A device whose vector pipeline allows fewer
    threads gets, from the same single build, the fragment-kernel plan. See tests/objc/e2e_plan_handoff.mm."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    run = subprocess.run([str(e2e_exe), str(e2e_exe.parent / "fa_kernels.metallib"), "handoff"], capture_output=True,
                         text=True, timeout=600, env=env)
    print(run.stdout)
    assert "ERROR: AddressSanitizer" not in run.stderr, run.stderr[-6000:]
    assert run.returncode == 0 and "FAIL" not in run.stdout, run.stdout[-6000:] + run.stderr[-3000:]
    for case in ("forward prefill causal GQA", "forward decode split-KV", "forward with attention probabilities",
                 "backward causal", "kvcache append", "limited vector pipeline"):
        assert f"{case}:" in run.stdout, case
    assert "passed" in run.stdout


def _sliced_qkv_bindings(route: str):
    """(handle - storage buffer, byte offset) of q, k, v sliced out of one packed (1, 32, 3, 2, 64) fp16 MPS tensor,
    as flash_attn_cy._mps finds them ("storage": the package's route) or as PyTorch 2.9.0/2.9.1's DLPack export
    gives them ("dlpack_2_9": data = buffer + offset, byte_offset 0)."""
    torch = pytest.importorskip("torch")
    from test_objc_mps import _fake_mps_view

    from flash_attn_cy import _mps
    b, s, h, d = 1, 32, 2, 64
    storage = 0x7000_0000
    strides = (s * 3 * h * d, 3 * h * d, d, 1)
    views = [_fake_mps_view(storage, b * s * 3 * h * d * 2, (b, s, h, d), strides, i * h * d, torch.float16)
             for i in range(3)]
    if route == "storage":
        found = [_mps.device_tensor(x) for x in views]
        return [(t.handle - storage, t.byte_offset) for t in found]
    exported = [_mps.parse_capsule(x.__dlpack__()) for x in views]
    return [(v.handle - storage, v.byte_offset) for v in exported]


@pytest.mark.parametrize("route", ["storage", "dlpack_2_9"])
def test_sliced_mps_views_through_the_mock_metal(e2e_exe: Path, route: str) -> None:
    """Issue 17 item 14: k and v sliced out of a packed qkv MPS tensor, found by flash_attn_cy._mps, bound by the real
    shim in the mock Metal and run by the simulator. The mock's buffers carry a poisoned tail, so a handle that points
    into a buffer (buffer + offset: what PyTorch 2.9's DLPack export gives for such a view) is caught the moment the
    shim messages it (FAIL line, abort); with the storage's buffer and byte offsets the output matches the CPU."""
    bindings = _sliced_qkv_bindings(route)
    args = [str(x) for pair in bindings for x in pair]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    run = subprocess.run([str(e2e_exe), str(e2e_exe.parent / "fa_kernels.metallib"), "sliced", *args],
                         capture_output=True, text=True, timeout=300, env=env)
    print(run.stdout, run.stderr[-2000:])
    if route == "storage":
        assert [delta for delta, _ in bindings] == [0, 0, 0] and [o for _, o in bindings] == [0, 256, 512]
        assert run.returncode == 0 and "FAIL" not in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
        assert "sliced qkv f16 causal (offsets 0 256 512)" in run.stdout
    else:
        assert [delta for delta, _ in bindings] == [0, 256, 512]  # the export's `data`: not the MTLBuffer
        assert run.returncode != 0
        assert "is not an MTLBuffer: a pointer into a mock MTLBuffer" in run.stdout, run.stdout[-3000:]
