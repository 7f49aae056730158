"""Shared fixtures and helpers for the flash_attn_cy test suite.

- ``rng``: a seeded ``numpy.random.Generator`` (different per test, stable across runs and moves between folders).
- ``backends`` / ``available_backends()``: names of the backends this build can run (``flash_attn_cy.backends()``),
  imported lazily so that a missing or half-built piece only skips the tests that need it.
- ``backend``: parametrised over every available backend (a ``@pytest.mark.parametrize("backend", ...)`` or a
  module's own ``backend`` fixture takes precedence).
- dtype helpers: ``DTYPES`` maps "fp32"/"fp16"/"bf16"/"fp64" to NumPy dtypes (bfloat16 from ``ml_dtypes``, since NumPy
  has none); ``randn(rng, shape, dtype)``.
- ``_tolerance.assert_close_to_ref`` is the one tolerance rule. It and the other helper modules of this directory
  (``_*.py``: tests/README.md lists them) are importable from the test files in every subfolder because this directory
  is put on sys.path, whatever pytest's import mode. This is the suite's only conftest.py (tests/README.md says why).
"""
from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

try:
    import ml_dtypes

    bfloat16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is in the [test] extra
    ml_dtypes = None
    bfloat16 = None

DTYPES = {"fp64": np.dtype(np.float64), "fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16)}
if bfloat16 is not None:
    DTYPES["bf16"] = bfloat16
LOWP_DTYPES = [n for n in ("fp32", "fp16", "bf16") if n in DTYPES]


def randn(rng: np.random.Generator, shape, dtype="fp32", scale: float = 1.0) -> np.ndarray:
    """Standard normal values (times ``scale``) rounded to ``dtype`` (name from DTYPES or a NumPy dtype)."""
    dt = DTYPES[dtype] if isinstance(dtype, str) else np.dtype(dtype)
    return (rng.standard_normal(shape) * scale).astype(dt)


def to_torch(x: np.ndarray):
    """NumPy array (incl. ml_dtypes.bfloat16) to a torch CPU tensor of the matching dtype."""
    import torch

    if bfloat16 is not None and x.dtype == bfloat16:
        return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(x))


def available_backends() -> list:
    """Names of the backends usable in this process (e.g. ['cpu', 'sim']); [] when the package cannot be imported."""
    try:
        from flash_attn_cy import _sysinfo

        return _sysinfo.available_backends()
    except Exception:  # noqa: BLE001 - a broken build shows up in the tests that import it
        return []


def seed_key(nodeid: str) -> str:
    """The text a test's ``rng`` is seeded from: its file's name and its test id, not the folder the file is in, so that
    moving a file between tests/ subfolders keeps its data. Written as the node id of the former flat layout
    (``tests/<file>::<test>``), which keeps every moved test's data what it was before the suite was grouped."""
    path, sep, test = nodeid.partition("::")
    return f"tests/{os.path.basename(path)}{sep}{test}"


@pytest.fixture
def rng(request) -> np.random.Generator:
    """Seeded per test from its file and test id (``seed_key``): reproducible, but different tests draw different
    data."""
    return np.random.default_rng(zlib.crc32(seed_key(request.node.nodeid).encode()))


@pytest.fixture(scope="session")
def backends() -> list:
    names = available_backends()
    if not names:
        pytest.skip("flash_attn_cy.backends() is not available in this build")
    return names


def _backend_params():
    names = available_backends()
    if not names:
        return [pytest.param("cpu", marks=pytest.mark.skip(reason="flash_attn_cy has no usable backend"))]
    return names


@pytest.fixture(params=_backend_params())
def backend(request) -> str:
    """Every backend usable here (a module's own `backend` fixture or parametrize marker takes precedence)."""
    return request.param


def layout_problems(root: str = _HERE) -> list:
    """What breaks the suite's layout rules (tests/README.md): two test modules with one file name in different
    folders (pytest imports test modules by file name, and would stop with a cryptic "import file mismatch"), or a
    conftest.py / __init__.py below this directory."""
    problems, seen = [], {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if rel != "." and name in ("conftest.py", "__init__.py"):
                problems.append(f"tests/{rel}/{name}: only tests/ itself has a conftest.py, and no folder an "
                                "__init__.py")
            if name.startswith("test_") and name.endswith(".py"):
                if name in seen:
                    problems.append(f"two test modules named {name}: tests/{seen[name]} and tests/{rel}: rename one")
                seen.setdefault(name, rel)
    return problems


def pytest_configure(config):
    problems = layout_problems()
    if problems:
        raise pytest.UsageError("tests/ layout (tests/README.md): " + "; ".join(problems))


def pytest_report_header(config):
    # which flash_attn_cy the suite is testing: it must be the installed build, not an extension-less source tree
    try:
        import flash_attn_cy

        where = os.path.dirname(flash_attn_cy.__file__)
        names = available_backends()
        return [f"flash_attn_cy {getattr(flash_attn_cy, '__version__', '?')} from {where}; backends: {names}"]
    except Exception as e:  # noqa: BLE001 - the header must never break collection
        return [f"flash_attn_cy not importable: {type(e).__name__}: {e}"]
