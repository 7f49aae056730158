"""The asv suite's classes, generated from the case table that ``python -m flash_attn_cy bench`` uses.

The benchmark library (flash_attn_cy/_bench/: cases.py's GROUPS, sides.py, timing.py) is loaded from this working
tree by path, not from the installed package: asv builds each commit it measures, and the library times that build
through its public API only, so older commits (without the library) are measured by the same code as new ones.

An "implementation" is the first axis of most groups: a flash_attn_cy backend ("cpu", "metal") or a library measured
beside it in the same run ("torch-sdpa-cpu", "torch-sdpa-mps", "mlx"). Only what this machine can run is listed, so
result files from different machines differ in that axis. A baseline that cannot serve a case raises
NotImplementedError in setup, which asv records as "n/a"; our own backends never do: anything broken there fails the
benchmark. The "sim" backend (the Metal simulator, a correctness tool orders of magnitude slower than the CPU
backend) has its own group on tiny shapes.

Environment knob: FLASH_ATTN_CY_ASV_BACKENDS, a comma-separated list overriding the implementations to measure.

asv starts a fresh interpreter for every parameter combination (its default "spawn" launch method), so this module
only *looks* for torch and MLX (importlib.util.find_spec) instead of importing them: a benchmark of our CPU backend
then never pays for `import torch` (seconds of start-up per process, hundreds of processes in a run).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import inspect
import os
import platform
import sys
from pathlib import Path
from typing import List

LIBRARY = Path(__file__).resolve().parents[2] / "flash_attn_cy" / "_bench"
BASELINES = ("torch-sdpa-cpu", "torch-sdpa-mps", "mlx")
SLOW_BY_DESIGN = ("sim",)


def _load_library():
    """flash_attn_cy/_bench of this checkout, as the package "flash_attn_cy_benchlib" (its modules import one another
    relatively and flash_attn_cy only through its public API)."""
    name = "flash_attn_cy_benchlib"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, LIBRARY / "__init__.py",
                                                  submodule_search_locations=[str(LIBRARY)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


lib = _load_library()
cases, sides, timing = lib.cases, lib.sides, lib.timing


def our_backends() -> List[str]:
    """flash_attn_cy backends usable here, in flash_attn_cy.backends() order, the simulator excluded."""
    import flash_attn_cy

    return [name for name, info in flash_attn_cy.backends().items()
            if info["available"] and name not in SLOW_BY_DESIGN]


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def baselines() -> List[str]:
    """Libraries measured beside ours. MPS can only exist on macOS, where torch is imported to ask for it."""
    found = []
    if _has_module("torch"):
        found.append("torch-sdpa-cpu")
        if platform.system() == "Darwin":
            import torch

            if torch.backends.mps.is_available():
                found.append("torch-sdpa-mps")
    if _has_module("mlx") and _has_module("mlx.core"):
        found.append("mlx")
    return found


def _override() -> List[str]:
    raw = os.environ.get("FLASH_ATTN_CY_ASV_BACKENDS", "")
    return [x.strip() for x in raw.split(",") if x.strip()]


def implementations() -> List[str]:
    """Implementations measured on this machine (flash_attn_cy backends first, then the baselines)."""
    return _override() or our_backends() + baselines()


def our_implementations() -> List[str]:
    """Only flash_attn_cy backends: for features no baseline has (sliding window)."""
    return [x for x in implementations() if not is_baseline(x)]


def is_baseline(impl: str) -> bool:
    return impl in BASELINES


def require_baseline(impl: str) -> None:
    """Baselines are optional comparisons: a missing library or device is n/a, not a failure."""
    if impl.startswith("torch-sdpa") and not _has_module("torch"):
        raise NotImplementedError("torch is not installed")
    if impl == "torch-sdpa-mps" and not sides.torch_mps_available():
        raise NotImplementedError("torch MPS is not available")
    if impl == "mlx" and not _has_module("mlx.core"):
        raise NotImplementedError("mlx is not installed")


# --------------------------------------------------------------------------------------------------------------------
# Sides, made once per process: asv re-runs setup() before every timing sample, and generating a 64k-token cache each
# time would cost more than the attention being timed. The benchmarks only call them.

@functools.lru_cache(maxsize=1)
def side(impl: str, shape) -> "sides.Side":
    return sides.make_side(impl, shape)


_warm = set()


def warm_up(impl: str, shape) -> None:
    """One call of a small case of the same kind, once per process, so that one-time costs (thread pools, autograd's
    engine, lazy library initialisation, GPU pipeline compilation) stay out of the first timed call: `asv run
    --quick` times exactly one call per benchmark."""
    small = cases.shrink(shape)
    key = (impl, small)
    if key in _warm:
        return
    sides.make_side(impl, small)()
    _warm.add(key)


# --------------------------------------------------------------------------------------------------------------------
# The classes

def _signature(names):
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(n, kind) for n in ["self", *names]])


def _metric(metric: str):
    """The body of track_<metric>: seconds per call from the shared timing core (median over ~0.3 s of calls)."""
    def rate(self):
        seconds = timing.median_seconds(self.run, timing.DEFAULT_MIN_TIME)
        if metric in ("gflops", "useful_gflops"):
            return self.shape.flops() / seconds / 1e9
        return cases.kv_bytes(self.shape) / seconds / 1e9

    def host_us(self):
        return self.host_us()[0]

    def sdpa_host_us(self):
        return self.host_us()[1]

    def ratio_to_sdpa(self):
        ours, theirs = self.host_us()
        return ours / theirs

    return {"gflops": rate, "useful_gflops": rate, "bandwidth": rate, "host_us": host_us,
            "sdpa_host_us": sdpa_host_us, "ratio_to_sdpa": ratio_to_sdpa}[metric]


class _Benchmark:
    """What every generated class shares. ``group``: its entry in the case table; ``resize``: a function applied to
    each case before it is set up (tests/cli/test_asv_suite.py runs every benchmark on shrunken cases with it)."""

    group = None
    resize = None

    def _params(self, values):
        names = [n for n, _ in self.group.axes]
        return dict(zip(names, values[-len(names):])) if names else {}

    def setup(self, *values):
        g = self.group
        shape = g.case(**self._params(values))
        if self.resize is not None:
            shape = type(self).resize(shape)
        self.shape = shape
        if g.impls == cases.IMPLS_SIM:
            impl = "sim"
            _require_sim()
        elif g.impls == "":  # HostCost: ours and SDPA, both made here
            impl = "cpu"
        else:
            impl = values[0]
            if g.peakmem_method and impl in ("metal", "torch-sdpa-mps", "mlx"):
                raise NotImplementedError("process RSS does not see GPU allocations")
        if impl.startswith("cpu:") and not sides.cpu_isa_runs(impl[4:]):  # CpuKernelSets: not this CPU's set
            raise NotImplementedError(f"this CPU cannot run the {impl[4:]} kernels")
        self.impl = impl
        if g.impls == "":
            self._setup_host_cost(shape)
            return
        if is_baseline(impl):
            require_baseline(impl)
        warm_up(impl, shape)
        self.run = side(impl, shape)

    def _setup_host_cost(self, shape):
        """Ours and SDPA on one thread each until teardown (so that setting it is not part of a timed call)."""
        require_baseline("torch-sdpa-cpu")
        self._threads = contextlib.ExitStack()
        self._threads.enter_context(lib.threads(1))
        self.run = side("cpu", shape)
        self.sdpa = sides.make_side("torch", shape)
        timing.warm_up({"cpu": self.run, "torch": self.sdpa})

    def teardown(self, *values):
        threads = getattr(self, "_threads", None)
        if threads is not None:
            threads.close()

    def host_us(self):
        """(ours, SDPA) median microseconds per call, timed in alternating rounds (timing.py)."""
        t = timing.interleaved_median_ms({"cpu": self.run, "torch": self.sdpa}, timing.HOST_COST_MIN_TIME, 3,
                                         warm={"cpu": 0.0, "torch": 0.0})
        return t["cpu"] * 1e3, t["torch"] * 1e3

    def _call(self):
        self.run()


def _require_sim() -> None:
    import flash_attn_cy

    if not flash_attn_cy.backends()["sim"]["available"]:
        raise RuntimeError(f"the sim backend is unavailable: {flash_attn_cy.backends()['sim']['reason']}")


def benchmark_class(name: str, module: str) -> type:
    """The asv class of case-table group ``name``, defined in ``module`` (asv names a benchmark after its module)."""
    g = cases.GROUPS[name]
    if g.impl_axis:
        axes = [(g.impl_axis[0], list(g.impl_axis[1]))]
    elif g.impls == cases.IMPLS_ALL:
        axes = [("impl", implementations())]
    elif g.impls == cases.IMPLS_OURS:
        axes = [("impl", our_implementations())]
    else:
        axes = []
    axes += [(n, list(v)) for n, v in g.axes]
    names = [n for n, _ in axes]
    body = {"group": g, "params": [v for _, v in axes], "param_names": names, "timeout": g.timeout,
            "repeat": g.repeat, "__module__": module, "__doc__": g.doc,
            # a change of the group's cases starts a new series; a change of how they are timed does not
            "version": hashlib.sha256(cases.describe(g).encode()).hexdigest()[:16]}

    def method(fn, unit=None):
        def bench(self, *values):
            return fn(self)
        bench.__signature__ = _signature(names)
        if unit:
            bench.unit = unit
        return bench

    def setup(self, *values):
        _Benchmark.setup(self, *values)

    def teardown(self, *values):
        _Benchmark.teardown(self, *values)
    setup.__signature__ = teardown.__signature__ = _signature(names)
    body.update(setup=setup, teardown=teardown)
    if g.time_method:
        body[g.time_method] = method(_Benchmark._call)
    if g.peakmem_method:
        body[g.peakmem_method] = method(_Benchmark._call)
    for metric in g.tracks:
        body[f"track_{metric}"] = method(_metric(metric), cases.METRICS[metric])
    return type(name, (_Benchmark,), body)
