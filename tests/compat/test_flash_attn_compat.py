"""The flash_attn drop-in: opt-in aliasing of ``flash_attn``, flash_attn 2.8.3 signatures, torch tensors in/out.

Numerical checks use the project's tolerance rule against the float64 reference (``flash_attn_cy.reference``);
aliasing behaviour that touches interpreter state (meta path, .pth start-up hook, a real flash_attn on the path)
runs in subprocesses so the test process stays clean.
"""
from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

import flash_attn_cy  # noqa: E402
from flash_attn_cy.flash_attn_compat import _alias  # noqa: E402
from flash_attn_cy.flash_attn_compat import flash_attn_interface as fai  # noqa: E402
from flash_attn_cy.reference import attention_ref_torch  # noqa: E402

from _tolerance import assert_close_to_ref  # noqa: E402

COMPAT_DIR = os.path.dirname(os.path.abspath(_alias.__file__))
SITE_DIR = os.path.join(COMPAT_DIR, "site")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run_python(code: str, env_extra: dict | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FLASH_ATTN_CY_AS_FLASH_ATTN", None)
    for key, val in (env_extra or {}).items():
        # PYTHONPATH entries go in front of any existing ones (the real flash_attn stand-ins must come first)
        env[key] = os.pathsep.join([val, env[key]]) if key == "PYTHONPATH" and env.get(key) else val
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def check_ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"subprocess failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def alias():
    """install_as_flash_attn() for one test, undone afterwards."""
    assert flash_attn_cy.install_as_flash_attn() is True
    yield
    _alias.uninstall_flash_attn_alias()


# ---------------------------------------------------------------------------------------------------------------
# Opt-in aliasing
# ---------------------------------------------------------------------------------------------------------------

def test_import_flash_attn_cy_alone_neither_aliases_nor_imports_transformers():
    out = check_ok(run_python("""
        import sys, flash_attn_cy
        import importlib.util
        print(importlib.util.find_spec("flash_attn") is None, "transformers" in sys.modules)
    """))
    assert out.split() == ["True", "False"]


def test_script_written_for_flash_attn_runs_unchanged_after_opt_in(tmp_path):
    script = tmp_path / "model_script.py"
    script.write_text(textwrap.dedent("""
        import torch
        from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
        from flash_attn.bert_padding import pad_input, unpad_input, index_first_axis
        from flash_attn.flash_attn_interface import flash_attn_qkvpacked_func
        from flash_attn.layers.rotary import apply_rotary_emb
        import flash_attn

        torch.manual_seed(0)
        q = torch.randn(2, 9, 4, 32, dtype=torch.bfloat16)
        k = torch.randn(2, 9, 2, 32, dtype=torch.bfloat16)
        v = torch.randn(2, 9, 2, 32, dtype=torch.bfloat16)
        out = flash_attn_func(q, k, v, causal=True)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2).double(), k.transpose(1, 2).double().repeat_interleave(2, 1),
            v.transpose(1, 2).double().repeat_interleave(2, 1), is_causal=True).transpose(1, 2)
        assert out.dtype == torch.bfloat16 and out.shape == q.shape
        print(flash_attn.__version__, float((out.double() - ref).abs().max()) < 0.05)
    """))
    out = check_ok(run_python(f"""
        import flash_attn_cy, runpy
        assert flash_attn_cy.install_as_flash_attn() is True
        runpy.run_path({str(script)!r}, run_name="__main__")
    """))
    assert out.split() == ["2.8.3", "True"]


def test_alias_modules_versions_and_submodules(alias):
    import flash_attn
    import flash_attn.bert_padding
    import flash_attn.flash_attn_interface
    import flash_attn.layers.rotary

    assert flash_attn.__version__ == _alias.FLASH_ATTN_API_LEVEL == "2.8.3"
    assert flash_attn.__flash_attn_cy_version__ == flash_attn_cy.__version__
    assert flash_attn.flash_attn_interface.__name__ == "flash_attn.flash_attn_interface"
    assert os.path.dirname(flash_attn.__file__) == COMPAT_DIR
    import flash_attn_cy.bert_padding as bp

    assert flash_attn.bert_padding.unpad_input is bp.unpad_input
    assert callable(flash_attn.layers.rotary.apply_rotary_emb)
    with pytest.raises(ModuleNotFoundError):
        import flash_attn.no_such_module  # noqa: F401


def test_install_is_idempotent_and_uninstall_restores():
    try:
        assert flash_attn_cy.install_as_flash_attn() is True
        assert flash_attn_cy.install_as_flash_attn() is True
        assert sum(bool(getattr(f, "flash_attn_cy_alias", False)) for f in sys.meta_path) == 1
        assert importlib.import_module("flash_attn").__version__ == "2.8.3"
    finally:
        _alias.uninstall_flash_attn_alias()
    assert "flash_attn" not in sys.modules
    with pytest.raises(ImportError):
        importlib.import_module("flash_attn")


def _fake_real_flash_attn(root) -> str:
    pkg = root / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("__version__ = '2.7.4'\nREAL = True\n")
    return str(root)


def test_never_shadows_an_installed_flash_attn(tmp_path):
    path = _fake_real_flash_attn(tmp_path)
    out = check_ok(run_python("""
        import warnings, flash_attn_cy
        from flash_attn_cy.flash_attn_compat._alias import FlashAttnShadowWarning
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ok = flash_attn_cy.install_as_flash_attn()
        import flash_attn
        print(ok, getattr(flash_attn, "REAL", False), any(issubclass(x.category, FlashAttnShadowWarning) for x in w))
    """, {"PYTHONPATH": path}))
    assert out.split() == ["False", "True", "True"]


def test_force_takes_the_name_even_over_an_imported_real_flash_attn(tmp_path):
    path = _fake_real_flash_attn(tmp_path)
    out = check_ok(run_python("""
        import warnings, flash_attn_cy
        import flash_attn as real
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert flash_attn_cy.install_as_flash_attn() is False   # already imported: left alone, with a warning
        assert w
        assert flash_attn_cy.install_as_flash_attn(force=True) is True
        import flash_attn
        print(getattr(real, "REAL", False), getattr(flash_attn, "REAL", False), flash_attn.__version__)
    """, {"PYTHONPATH": path}))
    assert out.split() == ["True", "False", "2.8.3"]


def test_environment_route_through_the_pth_start_up_hook(tmp_path):
    # site.addsitedir processes .pth files exactly as interpreter start-up does for site-packages, where a regular
    # (non-editable) install puts flash_attn_cy_alias.pth and _flash_attn_cy_alias_hook.py.
    code = f"""
        import site, sys
        site.addsitedir({SITE_DIR!r})
        import flash_attn
        print(flash_attn.__version__, getattr(flash_attn, "REAL", False), "flash_attn_cy" in sys.modules)
    """
    assert check_ok(run_python(code, {"FLASH_ATTN_CY_AS_FLASH_ATTN": "1"})).split() == ["2.8.3", "False", "True"]
    # Not set: nothing happens, nothing is imported at start-up.
    proc = run_python(code)
    assert proc.returncode != 0 and "No module named 'flash_attn'" in proc.stderr
    # A real flash_attn wins over the environment route (the hook's finder is asked last).
    path = _fake_real_flash_attn(tmp_path)
    out = check_ok(run_python(code, {"FLASH_ATTN_CY_AS_FLASH_ATTN": "1", "PYTHONPATH": path}))
    assert out.split() == ["2.7.4", "True", "False"]


def test_signatures_match_flash_attn_2_8_3():
    common = ["dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes", "deterministic",
              "return_attn_probs"]
    expected = {
        "flash_attn_func": ["q", "k", "v"] + common,
        "flash_attn_qkvpacked_func": ["qkv"] + common,
        "flash_attn_kvpacked_func": ["q", "kv"] + common,
        "flash_attn_varlen_func": ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"]
        + common + ["block_table"],
        "flash_attn_varlen_qkvpacked_func": ["qkv", "cu_seqlens", "max_seqlen"] + common,
        "flash_attn_varlen_kvpacked_func": ["q", "kv", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q",
                                            "max_seqlen_k"] + common,
        "flash_attn_with_kvcache": ["q", "k_cache", "v_cache", "k", "v", "rotary_cos", "rotary_sin", "cache_seqlens",
                                    "cache_batch_idx", "cache_leftpad", "block_table", "softmax_scale", "causal",
                                    "window_size", "softcap", "rotary_interleaved", "alibi_slopes", "num_splits",
                                    "return_softmax_lse"],
    }
    for name, params in expected.items():
        sig = inspect.signature(getattr(fai, name))
        assert list(sig.parameters) == params, name
        defaults = {p: sig.parameters[p].default for p in params if sig.parameters[p].default is not inspect._empty}
        assert defaults.get("window_size", (-1, -1)) == (-1, -1)
        assert defaults.get("softcap", 0.0) == 0.0 and defaults.get("causal") is False


# ---------------------------------------------------------------------------------------------------------------
# Numerics through the compat functions, with torch tensors as model code passes them
# ---------------------------------------------------------------------------------------------------------------

def _check(out, q, k, v, **ref_kwargs):
    ref64 = attention_ref_torch(q, k, v, **ref_kwargs)
    ref_lp = attention_ref_torch(q, k, v, compute_dtype=q.dtype, **ref_kwargs)
    assert_close_to_ref(out.detach().double().numpy(), ref64.double().numpy(),
                        ref_lp.float().numpy().astype("float32") if q.dtype == torch.bfloat16 else ref_lp.numpy(),
                        dtype=str(q.dtype))


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_flash_attn_func_non_contiguous_gqa_causal_window(dtype):
    g = torch.Generator().manual_seed(1)
    dt = TORCH_DTYPES[dtype]
    # [batch, heads, seq, dim] tensors transposed to flash layout: strided views, as transformers passes them.
    q = torch.randn(2, 6, 37, 40, generator=g).to(dt).transpose(1, 2)
    k = torch.randn(2, 2, 53, 40, generator=g).to(dt).transpose(1, 2)
    v = torch.randn(2, 2, 53, 40, generator=g).to(dt).transpose(1, 2)
    assert not q.is_contiguous()
    out = fai.flash_attn_func(q, k, v, causal=True, window_size=(11, 0))
    assert out.dtype == dt and out.device == q.device and out.shape == q.shape
    _check(out, q, k, v, causal=True, window_size=(11, 0))


def test_flash_attn_func_return_attn_probs_and_softcap():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 17, 3, 24, generator=g) for _ in range(3))
    res = fai.flash_attn_func(q, k, v, softcap=5.0, return_attn_probs=True)
    assert isinstance(res, tuple) and len(res) == 3
    out, lse = res[0], res[1]
    assert lse.shape == (1, 3, 17) and lse.dtype == torch.float32
    _check(out, q, k, v, softcap=5.0)


def test_packed_variants_match_unpacked():
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 19, 3, 4, 32, generator=g, dtype=torch.float16)
    out_qkv = fai.flash_attn_qkvpacked_func(qkv, causal=True)
    out_kv = fai.flash_attn_kvpacked_func(qkv[:, :, 0], qkv[:, :, 1:], causal=True)
    out = fai.flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=True)
    assert torch.equal(out_qkv, out) and torch.equal(out_kv, out)
    _check(out, qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=True)


def test_varlen_through_bert_padding_matches_dense_per_sequence():
    from flash_attn_cy.bert_padding import pad_input, unpad_input

    g = torch.Generator().manual_seed(4)
    batch, seqlen, h, hk, d = 3, 23, 4, 2, 48
    q = torch.randn(batch, seqlen, h, d, generator=g, dtype=torch.bfloat16)
    k = torch.randn(batch, seqlen, hk, d, generator=g, dtype=torch.bfloat16)
    v = torch.randn(batch, seqlen, hk, d, generator=g, dtype=torch.bfloat16)
    mask = torch.ones(batch, seqlen, dtype=torch.bool)
    mask[0, 17:] = False   # right padding
    mask[2, :9] = False    # left padding
    q_u, idx, cu, max_s, used = unpad_input(q, mask)
    k_u, v_u = unpad_input(k, mask)[0], unpad_input(v, mask)[0]
    out_u = fai.flash_attn_varlen_func(q_u, k_u, v_u, cu, cu, max_s, max_s, causal=True)
    out = pad_input(out_u, idx, batch, seqlen)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert torch.all(out[~mask] == 0)
    for b in range(batch):
        rows = mask[b]
        _check(out[b:b + 1, rows], q[b:b + 1, rows], k[b:b + 1, rows], v[b:b + 1, rows], causal=True)


def test_varlen_with_block_table_reads_a_paged_cache():
    g = torch.Generator().manual_seed(6)
    h, hk, d, page = 4, 2, 32, 16
    lengths_q, lengths_k = [3, 5], [21, 40]
    q = torch.randn(sum(lengths_q), h, d, generator=g, dtype=torch.float16)
    k_dense = [torch.randn(n, hk, d, generator=g, dtype=torch.float16) for n in lengths_k]
    v_dense = [torch.randn(n, hk, d, generator=g, dtype=torch.float16) for n in lengths_k]
    # scatter each sequence's keys into non-consecutive physical pages
    block_table = torch.tensor([[5, 1, 0], [2, 6, 3]], dtype=torch.int32)
    k_cache = torch.zeros(7, page, hk, d, dtype=torch.float16)
    v_cache = torch.zeros(7, page, hk, d, dtype=torch.float16)
    for b, n in enumerate(lengths_k):
        for i in range(n):
            k_cache[block_table[b, i // page], i % page] = k_dense[b][i]
            v_cache[block_table[b, i // page], i % page] = v_dense[b][i]
    cu_q = torch.tensor([0, 3, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 21, 61], dtype=torch.int32)
    out = fai.flash_attn_varlen_func(q, k_cache, v_cache, cu_q, cu_k, 5, 40, causal=True, block_table=block_table)
    assert out.shape == q.shape and out.dtype == torch.float16
    for b in range(2):
        rows = slice(int(cu_q[b]), int(cu_q[b + 1]))
        _check(out[rows][None], q[rows][None], k_dense[b][None], v_dense[b][None], causal=True)


def test_with_kvcache_appends_in_place_and_attends():
    g = torch.Generator().manual_seed(5)
    batch, cap, h, hk, d = 2, 64, 4, 1, 32
    k_cache = torch.zeros(batch, cap, hk, d)
    v_cache = torch.zeros(batch, cap, hk, d)
    lens = torch.tensor([20, 41], dtype=torch.int32)
    for b in range(batch):
        k_cache[b, : lens[b]] = torch.randn(int(lens[b]), hk, d, generator=g)
        v_cache[b, : lens[b]] = torch.randn(int(lens[b]), hk, d, generator=g)
    q = torch.randn(batch, 1, h, d, generator=g)
    k_new = torch.randn(batch, 1, hk, d, generator=g)
    v_new = torch.randn(batch, 1, hk, d, generator=g)
    out = fai.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=lens, causal=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    for b in range(batch):
        n = int(lens[b])
        assert torch.equal(k_cache[b, n], k_new[b, 0]) and torch.equal(v_cache[b, n], v_new[b, 0])
        _check(out[b:b + 1], q[b:b + 1], k_cache[b:b + 1, : n + 1], v_cache[b:b + 1, : n + 1], causal=True)


def test_bad_arguments_raise_value_and_runtime_error():
    q = torch.randn(2, 8, 4, 32)
    with pytest.raises(ValueError) as info:
        fai.flash_attn_func(q[0], q, q)  # 3-D q
    assert isinstance(info.value, RuntimeError)  # what code written for flash_attn's CUDA extension catches
    with pytest.raises(RuntimeError):
        fai.flash_attn_func(q, q[:, :, :3], q[:, :, :3])  # 4 query heads not a multiple of 3 kv heads
    with pytest.raises((TypeError, ValueError)) as info:
        fai.flash_attn_func(q, q.to(torch.float16), q)  # mixed dtypes
    assert isinstance(info.value, RuntimeError)
