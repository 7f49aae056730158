"""NumPy is the only runtime dependency: with torch, transformers and ml_dtypes made unimportable (in a subprocess),
the package imports (also `from flash_attn_cy import *`), computes on NumPy arrays, runs the CLI, and the
integrations that need the missing packages say so with an ImportError instead of failing on attribute access."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

BLOCK = "import sys\nfor _m in ('torch', 'transformers', 'ml_dtypes'):\n    sys.modules[_m] = None\n"


def _run(body: str, tmp_path):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(body)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_numpy_only_use(tmp_path):
    r = _run("""
        import numpy as np
        from flash_attn_cy import *
        import flash_attn_cy

        q = np.random.default_rng(0).standard_normal((1, 9, 2, 16)).astype(np.float32)
        out, lse, _ = flash_attn_func(q, q, q, causal=True, return_attn_probs=True)
        dq, dk, dv = backward(out, q, q, q, out, lse, causal=True)
        assert out.shape == q.shape and dq.shape == q.shape
        assert hasattr(flash_attn_cy, "register_transformers")
        try:
            register_transformers()
        except ImportError as e:
            assert "PyTorch" in str(e), e
        else:
            raise AssertionError("register_transformers() worked without torch")
        assert install_as_flash_attn()
        from flash_attn import flash_attn_func as f2
        assert f2(q, q, q).shape == q.shape
        assert "torch" not in [m for m, v in sys.modules.items() if v is not None]
        print("numpy-only ok")
    """, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "numpy-only ok" in r.stdout


def test_cli_without_torch_or_ml_dtypes(tmp_path):
    r = _run("""
        from flash_attn_cy.cli import main
        assert main(["info"]) == 0
        assert main(["verify", "--quick", "--backend", "cpu"]) == 0
    """, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bf16 is not checked" in r.stderr and "passed, 0 failed" in r.stdout
