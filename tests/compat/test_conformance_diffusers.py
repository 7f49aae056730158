"""diffusers through the flash_attn drop-in (issue 16, item 7).

diffusers enables its ``flash`` / ``flash_varlen`` attention backends only when ``flash_attn`` is importable AND
``importlib.metadata`` reports a flash_attn version >= 2.6.3. While the alias is installed (and no real flash_attn is
present) the alias's finder answers that metadata query with ``2.8.3+flash_attn_cy.<version>``: the flash_attn API
level, and in the local label what really runs. Everything runs in subprocesses: the alias must be installed before
diffusers is imported, and the test process stays clean.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import _paths
import pytest

TESTS = str(_paths.TESTS)  # on the subprocesses' path: the shared helpers (_tolerance)


def run_python(code: str, pythonpath: str | None = None) -> str:
    env = dict(os.environ)
    env.pop("FLASH_ATTN_CY_AS_FLASH_ATTN", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, TESTS, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, f"subprocess failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def test_distribution_metadata_only_while_aliased():
    out = run_python("""
        import importlib.metadata as md
        import flash_attn_cy
        try:
            md.version("flash_attn")
            print("before:found")
        except md.PackageNotFoundError:
            print("before:none")
        assert flash_attn_cy.install_as_flash_attn()
        print(md.version("flash_attn"), md.version("flash-attn"))
        print(md.metadata("flash_attn")["Summary"])
        from flash_attn_cy.flash_attn_compat._alias import uninstall_flash_attn_alias
        uninstall_flash_attn_alias()
        try:
            md.version("flash_attn")
            print("after:found")
        except md.PackageNotFoundError:
            print("after:none")
    """)
    lines = out.splitlines()
    import flash_attn_cy
    from packaging.version import Version

    want = f"2.8.3+flash_attn_cy.{flash_attn_cy.__version__}"
    assert lines[0] == "before:none" and lines[-1] == "after:none"
    assert lines[1].split() == [want, want]
    assert Version(want) >= Version("2.6.3") and Version(want).local.startswith("flash.attn.cy")
    assert "flash_attn_cy" in lines[2]


def test_environment_route_answers_the_metadata_lookup_lazily():
    site_dir = str(_paths.ROOT / "flash_attn_cy" / "flash_attn_compat" / "site")
    env_code = f"""
        import importlib.metadata as md, os, site, sys
        os.environ["FLASH_ATTN_CY_AS_FLASH_ATTN"] = "1"
        site.addsitedir({site_dir!r})          # processes the .pth as start-up does for site-packages
        names = [d.metadata["Name"] for d in md.distributions()]
        print("flash_attn" in names, "flash_attn_cy" in sys.modules)   # enumerations stay cheap and alias-free
        print(md.version("flash_attn").startswith("2.8.3+flash_attn_cy"), "flash_attn_cy" in sys.modules)
    """
    assert run_python(env_code).split() == ["False", "False", "True", "True"]


def test_a_real_flash_attn_distribution_is_never_shadowed(tmp_path):
    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("__version__ = '2.5.0'\nREAL = True\n")
    dist = tmp_path / "flash_attn-2.5.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: flash_attn\nVersion: 2.5.0\n")
    out = run_python("""
        import importlib.metadata as md, warnings
        import flash_attn_cy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            print(flash_attn_cy.install_as_flash_attn())
        print(md.version("flash_attn"), [d.version for d in md.distributions() if d.metadata["Name"] == "flash_attn"])
        print(flash_attn_cy.install_as_flash_attn(force=True))  # even forced, the real metadata stays the answer
        print(md.version("flash_attn"), [d.version for d in md.distributions() if d.metadata["Name"] == "flash_attn"])
    """, pythonpath=str(tmp_path))
    assert out.splitlines() == ["False", "2.5.0 ['2.5.0']", "True", "2.5.0 ['2.5.0']"]


def test_diffusers_flash_backends_match_native():
    pytest.importorskip("diffusers", reason="diffusers is not installed (pip install '.[diffusers]')")
    out = run_python("""
        import flash_attn_cy
        assert flash_attn_cy.install_as_flash_attn()   # before diffusers is imported
        import torch
        from diffusers.utils import is_flash_attn_available, is_flash_attn_version
        assert is_flash_attn_available() and is_flash_attn_version(">=", "2.6.3")
        from diffusers import FluxTransformer2DModel
        from _tolerance import assert_close_to_ref

        calls = []
        for name in ("flash_attn_func", "flash_attn_varlen_func"):   # count what diffusers calls through the alias
            def spy(*a, _orig=getattr(flash_attn_cy.interface, name), _name=name, **k):
                calls.append(_name)
                return _orig(*a, **k)
            setattr(flash_attn_cy.interface, name, spy)

        torch.manual_seed(0)
        model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                       pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)).eval()
        h = w = 6
        t = 7
        inputs = dict(hidden_states=torch.randn(2, h * w, 4), encoder_hidden_states=torch.randn(2, t, 32),
                      pooled_projections=torch.randn(2, 32), timestep=torch.tensor([0.3, 0.7]),
                      txt_ids=torch.zeros(t, 3))
        ids = torch.zeros(h * w, 3)
        ids[:, 1] = torch.arange(h).repeat_interleave(w)
        ids[:, 2] = torch.arange(w).repeat(h)
        inputs["img_ids"] = ids

        def run(backend, dtype):
            m = model.to(dtype)
            m.set_attention_backend(backend)
            args = {k: (v.to(dtype) if v.is_floating_point() and k != "timestep" else v) for k, v in inputs.items()}
            with torch.no_grad():
                return m(**args).sample

        ref64 = run("native", torch.float64)
        lowp = run("native", torch.bfloat16)          # PyTorch's own attention in bfloat16: the error budget
        for backend in ("flash", "flash_varlen"):
            n = len(calls)
            out = run(backend, torch.bfloat16)
            assert len(calls) > n, backend
            err = assert_close_to_ref(out.double().numpy(), ref64.numpy(), lowp.float().numpy(), dtype="bfloat16",
                                      what=backend)
            print(backend, err, sorted(set(calls[n:])))
    """)
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith("flash"))
    assert "flash_attn_func" in lines["flash"] and "flash_attn_varlen_func" in lines["flash_varlen"]
