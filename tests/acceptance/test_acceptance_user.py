"""Acceptance tests from a new user's side: bad inputs give clear ValueError/TypeError naming the argument, the
command line (`python -m flash_attn_cy info|verify|bench`, `python -m flash_attn_cy.sim run|check` on a kernel of
our own), the opt-in `flash_attn` alias, and torch.compile with the default backend."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import flash_attn_cy
from flash_attn_cy import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

Q = np.zeros((1, 4, 2, 8), np.float32)
C = np.array([0, 4], np.int32)

BAD = [
    ("q", TypeError, lambda: flash_attn_func([[1.0]], Q, Q)),
    ("q", ValueError, lambda: flash_attn_func(Q[0], Q, Q)),
    ("k", TypeError, lambda: flash_attn_func(Q, Q.astype(np.float16), Q)),
    ("k", TypeError, lambda: flash_attn_func(torch.from_numpy(Q), Q, Q)),
    ("q", TypeError, lambda: flash_attn_func(*(np.zeros((1, 4, 1, 8), np.int32),) * 3)),
    ("head", ValueError, lambda: flash_attn_func(np.zeros((1, 4, 3, 8), np.float32), Q, Q)),
    ("head dim", ValueError, lambda: flash_attn_func(*(np.zeros((1, 2, 1, 257), np.float32),) * 3)),
    ("v", ValueError, lambda: flash_attn_func(Q, Q, np.zeros((1, 5, 2, 8), np.float32))),
    ("k", ValueError, lambda: flash_attn_func(Q, np.zeros((2, 4, 2, 8), np.float32), np.zeros((2, 4, 2, 8),
                                                                                            np.float32))),
    ("window_size", ValueError, lambda: flash_attn_func(Q, Q, Q, window_size=(-2, 0))),
    ("window_size", ValueError, lambda: flash_attn_func(Q, Q, Q, window_size=3)),
    ("alibi_slopes", ValueError, lambda: flash_attn_func(Q, Q, Q, alibi_slopes=np.zeros(3, np.float32))),
    ("alibi_slopes", TypeError, lambda: flash_attn_func(Q, Q, Q, alibi_slopes=np.zeros(2, np.float16))),
    ("dropout_p", ValueError, lambda: flash_attn_func(Q, Q, Q, dropout_p=1.5)),
    ("softcap", ValueError, lambda: flash_attn_func(Q, Q, Q, softcap=-1.0)),
    ("softmax_scale", TypeError, lambda: flash_attn_func(Q, Q, Q, softmax_scale="x")),
    ("backend", ValueError, lambda: flash_attn_func(Q, Q, Q, backend="cuda")),
    ("cu_seqlens_q", ValueError, lambda: flash_attn_varlen_func(Q[0], Q[0], Q[0], np.array([0, 3, 2, 4], np.int32),
                                                                np.array([0, 1, 2, 4], np.int32), 3, 3)),
    ("cu_seqlens_q", ValueError, lambda: flash_attn_varlen_func(Q[0], Q[0], Q[0], np.array([0, 5], np.int32), C,
                                                                5, 4)),
    ("cu_seqlens_q", TypeError, lambda: flash_attn_varlen_func(Q[0], Q[0], Q[0], C.astype(np.float32), C, 4, 4)),
    ("max_seqlen_q", ValueError, lambda: flash_attn_varlen_func(Q[0], Q[0], Q[0], C, C, 2, 4)),
    ("cache_seqlens", ValueError, lambda: flash_attn_with_kvcache(Q, Q.copy(), Q.copy(), Q[:, :1], Q[:, :1],
                                                                  cache_seqlens=4)),
    ("k_cache", ValueError, lambda: flash_attn_with_kvcache(Q, np.broadcast_to(Q, Q.shape), Q.copy(), Q[:, :1],
                                                            Q[:, :1], cache_seqlens=1)),
]


@pytest.mark.parametrize("name,exc,call", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_input_names_the_argument(name, exc, call):
    with pytest.raises(exc) as info:
        call()
    assert name in str(info.value), str(info.value)


def test_unavailable_backend_is_a_clear_error():
    if flash_attn_cy.backends()["metal"]["available"]:
        pytest.skip("Metal present")
    with pytest.raises(ValueError, match="backend"):  # also a RuntimeError
        flash_attn_func(Q, Q, Q, backend="metal")
    with pytest.raises(RuntimeError, match="metal"):
        flash_attn_func(Q, Q, Q, backend="metal")


def test_torch_compile_default_backend_fullgraph():
    q, k, v = (torch.randn(1, 9, 2, 16, requires_grad=True) for _ in range(3))
    fn = torch.compile(lambda a, b, c: flash_attn_func(a, b, c, causal=True).square().sum(), fullgraph=True,
                       backend="eager")
    val = fn(q, k, v)
    val.backward()
    eager = flash_attn_func(q.detach(), k.detach(), v.detach(), causal=True, backend="cpu").square().sum()
    torch.testing.assert_close(val.detach(), eager)
    assert q.grad is not None and q.grad.shape == q.shape


def test_backward_is_callable_at_package_level():
    from flash_attn_cy._backward import backward as impl
    assert flash_attn_cy.backward is impl and "backward" in flash_attn_cy.__all__


# ---------------------------------------------------------------------------------------------------------------
# command line: run from a neutral directory so the installed package (not the source tree) is imported

def _run(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH="")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=_neutral_dir(),
                          timeout=timeout, env=env)


def _neutral_dir():
    import tempfile
    return tempfile.gettempdir()


def test_cli_info():
    r = _run("-m", "flash_attn_cy", "info")
    assert r.returncode == 0, r.stderr
    assert "cpu" in r.stdout and "sim" in r.stdout and "metal" in r.stdout
    assert flash_attn_cy.__version__ in r.stdout


def test_cli_verify_quick_cpu():
    r = _run("-m", "flash_attn_cy", "verify", "--quick", "--backend", "cpu", "--dtypes", "fp16", "--case", "causal",
             timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pass" in r.stdout.lower() or "ok" in r.stdout.lower()


def test_cli_bench_tiny(tmp_path):
    out = tmp_path / "b.json"
    r = _run("-m", "flash_attn_cy", "bench", "--seqlens", "64", "--headdims", "32", "--dtypes", "fp32",
             "--batch", "1", "--heads", "2", "--causal", "true", "--json", str(out), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.exists() and out.stat().st_size > 0


def test_cli_bad_subcommand_fails_cleanly():
    r = _run("-m", "flash_attn_cy", "frobnicate")
    assert r.returncode != 0 and "Traceback" not in r.stderr


USER_KERNEL = textwrap.dedent("""
    #include <metal_stdlib>
    using namespace metal;
    // y[i] = a * x[i] + y[i], one thread per element, guarded for a partial last threadgroup
    kernel void saxpy(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                      constant float& a [[buffer(2)]], constant uint& n [[buffer(3)]],
                      uint gid [[thread_position_in_grid]]) {
        if (gid < n) { y[gid] = a * x[gid] + y[gid]; }
    }
""")

RACY_KERNEL = textwrap.dedent("""
    #include <metal_stdlib>
    using namespace metal;
    kernel void racy(device float* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
        threadgroup float t[64];
        t[tid] = float(tid);
        y[tid] = t[(tid + 1) % 64];   // reads a neighbour's slot without a barrier: a race
    }
""")


def test_sim_run_user_kernel(tmp_path):
    (tmp_path / "saxpy.metal").write_text(USER_KERNEL)
    x = np.arange(100, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.ones(100, np.float32))
    r = _run("-m", "flash_attn_cy.sim", "run", str(tmp_path / "saxpy.metal"), "--kernel", "saxpy", "--grid", "4",
             "--threadgroup", "32", "--buffer", f"0={tmp_path / 'x.npy'}", "--buffer", f"1={tmp_path / 'y.npy'}",
             "--bytes", "2=float32:2.5", "--bytes", "3=uint32:100", "--schedules", "2", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stdout + r.stderr
    y = np.load(tmp_path / "o" / "buffer1.npy")
    np.testing.assert_array_equal(y, 2.5 * x + 1)
    r = _run("-m", "flash_attn_cy.sim", "check", str(tmp_path / "saxpy.metal"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_sim_run_reports_a_race(tmp_path):
    (tmp_path / "racy.metal").write_text(RACY_KERNEL)
    r = _run("-m", "flash_attn_cy.sim", "run", str(tmp_path / "racy.metal"), "--kernel", "racy", "--grid", "1",
             "--threadgroup", "64", "--buffer", "0=zeros:float32:64", "--schedules", "2")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "race" in (r.stdout + r.stderr).lower()


def test_install_as_flash_attn_script():
    script = textwrap.dedent("""
        import importlib.util, sys
        if importlib.util.find_spec("flash_attn") is not None:
            print("SKIP real flash_attn installed"); sys.exit(0)
        import flash_attn_cy
        flash_attn_cy.install_as_flash_attn()
        import torch
        from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
        from flash_attn.flash_attn_interface import flash_attn_func as f2
        from flash_attn.bert_padding import pad_input, unpad_input, index_first_axis
        import flash_attn
        assert flash_attn.__version__.startswith("2."), flash_attn.__version__
        assert f2 is flash_attn_func
        q = torch.randn(2, 7, 4, 32, dtype=torch.bfloat16).transpose(1, 1)
        out = flash_attn_func(q, q, q, causal=True)
        assert out.dtype == torch.bfloat16 and out.shape == q.shape
        print("OK")
    """)
    r = _run("-c", script)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout or "SKIP" in r.stdout


def test_source_tree_import_explains_itself(tmp_path):
    """Running from a source checkout (the current directory shadows the installed package) must say so instead of
    a bare 'cannot import name _core ... circular import'."""
    pkg = tmp_path / "flash_attn_cy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(open(flash_attn_cy.__file__).read())
    (pkg / "_core.pyx").write_text("# source only\n")
    # -S: no site hooks, so an editable install's import finder cannot take precedence over the current directory
    r = subprocess.run([sys.executable, "-S", "-c", "import flash_attn_cy"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60, env=dict(os.environ, PYTHONPATH=""))
    assert r.returncode != 0
    assert "source tree" in r.stderr and "python -P" in r.stderr, r.stderr
