"""The asv suite (asv_benchmarks/benchmarks) is importable, its parameter grids are well formed, and every benchmark
runs once on a tiny shape. Nothing here is timed: speed is what the suite itself measures."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
import math
import pathlib
import pkgutil
import sys

import pytest

import flash_attn_cy

from _paths import ROOT  # noqa: E402
SUITE = ROOT / "asv_benchmarks"
PREFIXES = ("time_", "track_", "peakmem_", "mem_", "timeraw_")

if not (SUITE / "benchmarks").is_dir():
    pytest.skip("asv_benchmarks/ is not next to tests/ (installed-package test run)", allow_module_level=True)


def _suite_modules():
    sys.path.insert(0, str(SUITE))
    try:
        pkg = importlib.import_module("benchmarks")
        return [importlib.import_module(f"benchmarks.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)
                if m.name.startswith("bench_")]
    finally:
        sys.path.remove(str(SUITE))


MODULES = _suite_modules()
from benchmarks import _common  # noqa: E402  (importable once _suite_modules() ran)

CLASSES = [cls for mod in MODULES for _, cls in inspect.getmembers(mod, inspect.isclass)
           if cls.__module__ == mod.__name__ and not cls.__name__.startswith("_")]
IDS = [f"{c.__module__.split('.')[-1]}.{c.__name__}" for c in CLASSES]


def _methods(cls):
    return [name for name in dir(cls) if name.startswith(PREFIXES) and callable(getattr(cls, name))]


def test_suite_has_every_group():
    names = {c.__name__ for c in CLASSES}
    assert {"Forward", "SeqlenScaling", "GroupedQuery", "SlidingWindow", "Varlen", "Decode", "Backward",
            "PeakMemory", "Simulator", "TinyLlamaGenerate", "HostCost", "CpuKernelSets"} <= names


def test_cpu_kernel_sets_are_told_apart():
    """CpuKernelSets times each set under its own name: a set counts as running only where FLASH_ATTN_CY_CPU_ISA
    really gives it (the description's kernel path), so an AMX series never holds AVX-512 timings."""
    import platform

    sides = _common.sides
    best = sides.cpu_kernel_set("")  # "avx512-bf16", "amx", "neon-bf16", ...
    assert sides.cpu_isa_runs(best.split("-")[0]), best
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert not sides.cpu_isa_runs("neon")
    else:
        assert not any(sides.cpu_isa_runs(isa) for isa in ("avx2", "avx512", "amx"))
    assert sides.cpu_isa_runs("amx") == (best == "amx")  # the tiles' scalar model is never an "amx" series


def test_classes_are_the_case_table_of_the_cli():
    """One case table: every group of flash_attn_cy/_bench/cases.py is one asv class, the suite loads that file (the
    working tree's copy of it), and each class's parameter combinations are the table's cases."""
    from flash_attn_cy import _bench

    # the suite loads the table from the working tree (older commits are timed by the same code); the package under
    # test may be installed elsewhere (CI installs it non-editable): the same file, or a copy of it
    suite_cases, package_cases = pathlib.Path(_common.cases.__file__), pathlib.Path(_bench.cases.__file__)
    assert suite_cases.read_bytes() == package_cases.read_bytes(), (suite_cases, package_cases)
    assert sorted(c.__name__ for c in CLASSES) == sorted(_bench.GROUPS)
    for cls in CLASSES:
        group = _bench.GROUPS[cls.__name__]
        own = [n for n, _ in group.axes]
        assert cls.param_names[-len(own):] == own and cls.params[-len(own):] == [list(v) for _, v in group.axes]
        for values in itertools.product(*cls.params):
            params = cls()._params(values)
            assert dataclasses.astuple(cls.group.case(**params)) == dataclasses.astuple(group.case(**params))


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_params_are_well_formed(cls):
    params, names = cls.params, cls.param_names
    assert isinstance(params, list) and all(isinstance(p, list) and p for p in params), cls
    assert len(names) == len(params) and len(set(names)) == len(names)
    for axis in params:
        assert len({repr(v) for v in axis}) == len(axis), f"{cls.__name__}: duplicate values in {axis}"
    assert _methods(cls), f"{cls.__name__} has no benchmark method"
    for name in _methods(cls) + ["setup", "teardown"]:
        sig = inspect.signature(getattr(cls, name))
        assert len(sig.parameters) == len(params) + 1, f"{cls.__name__}.{name}{sig} vs {names}"
    for name in _methods(cls):
        if name.startswith("track_"):
            assert getattr(getattr(cls, name), "unit", None), f"{cls.__name__}.{name} has no unit"


def test_every_backend_is_measured():
    """Our backends are on every impl axis (the simulator in its own group), the baselines only when present."""
    ours = [b for b, info in flash_attn_cy.backends().items() if info["available"]]
    assert "cpu" in ours
    impls = _common.implementations()
    for b in ours:
        if b == "sim":
            assert "sim" not in impls
        else:
            assert b in impls
    for cls in CLASSES:
        if "impl" in cls.param_names:
            assert "cpu" in cls.params[cls.param_names.index("impl")], cls.__name__
    try:
        import torch  # noqa: F401

        assert "torch-sdpa-cpu" in impls
    except ImportError:
        assert "torch-sdpa-cpu" not in impls


def _tiny(shape):
    """A tiny stand-in for a benchmark's case: same mode, features and dtype, at most 64 tokens (96 cached keys, an
    8-token prompt and 2 new tokens)."""
    return _common.cases.shrink(shape, seqlen=64, cache_len=96, new_tokens=2, prompt=8)


def _tiny_cases(cls):
    """One parameter tuple per implementation (ours and the torch baseline when installed), the last value of every
    other axis (the largest case: _tiny shrinks it)."""
    base = [axis[-1] for axis in cls.params]
    if cls.param_names[0] == "kernel_set":  # CpuKernelSets: every set (n/a where the CPU cannot run it)
        return [(k, *base[1:]) for k in cls.params[0]]
    if "impl" not in cls.param_names:
        return [tuple(base)]
    i = cls.param_names.index("impl")
    cases = []
    for impl in cls.params[i]:
        if impl in ("cpu", "torch-sdpa-cpu", "mlx"):  # mlx: only when installed (it has Linux CPU wheels)
            case = list(base)
            case[i] = impl
            cases.append(tuple(case))
    return cases


def _clear_caches(mod):
    for obj in list(vars(mod).values()) + list(vars(_common).values()):
        if hasattr(obj, "cache_clear"):
            obj.cache_clear()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_each_benchmark_runs_on_a_tiny_case(cls, monkeypatch):
    mod = sys.modules[cls.__module__]
    monkeypatch.setattr(cls, "resize", _tiny)
    if cls.__name__ == "TinyLlamaGenerate":
        pytest.importorskip("transformers")
    _clear_caches(mod)
    try:
        for case in _tiny_cases(cls):
            for method in _methods(cls):
                bench = cls()
                try:
                    bench.setup(*case)
                except NotImplementedError as e:
                    # only optional comparisons, and kernel sets this CPU lacks, may be n/a; our backends must run
                    assert (_common.is_baseline(case[0]) or cls.__name__ == "TinyLlamaGenerate"
                            or (case[0].startswith("cpu:") and not _common.sides.cpu_isa_runs(case[0][4:]))), (case, e)
                    continue
                try:
                    result = getattr(bench, method)(*case)
                finally:
                    bench.teardown(*case)
                assert max(bench.shape.seqlen_q, bench.shape.seqlen_k) <= 96, bench.shape  # the tiny case ran
                if method.startswith("track_"):
                    assert isinstance(result, float) and math.isfinite(result) and result > 0, (method, case, result)
    finally:
        _clear_caches(mod)


def test_asv_discovers_the_suite():
    """asv's own discovery (what `asv check` and `asv run` use) finds every benchmark method."""
    discovery = pytest.importorskip("asv_runner.discovery")
    sys.path.insert(0, str(SUITE))
    try:
        found = {b.name for b in discovery.disc_benchmarks(str(SUITE / "benchmarks"))}
    finally:
        sys.path.remove(str(SUITE))
    expected = {f"{c.__module__.split('.', 1)[1]}.{c.__name__}.{m}" for c in CLASSES for m in _methods(c)}
    assert expected == found
