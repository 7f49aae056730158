"""What the plan-cache tests share (tests/api/test_plan_cache*.py, tests/kvcache/test_kvcache_plan_forms.py): an empty
cache around every test, a counter of the calls that took the general (validating) path, and inputs as NumPy arrays
or torch tensors. Import `fresh_plans` into a test module to make it autouse there."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from flash_attn_cy import _core


@pytest.fixture(autouse=True)
def fresh_plans():
    _core.clear_plans()
    yield
    _core.clear_plans()


def count_calls(monkeypatch, module, name: str, on_call: Callable[[], object]) -> None:
    """Replace module.name by a wrapper that runs on_call() before each call of the real function."""
    real = getattr(module, name)

    def wrapper(*a, **k):
        on_call()
        return real(*a, **k)
    monkeypatch.setattr(module, name, wrapper)


def as_kind(x, kind: str):
    """x as given ("numpy") or as a torch tensor sharing its values."""
    if kind == "numpy":
        return x
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))
