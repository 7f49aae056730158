"""The kernel argument table is declared once and every reader agrees with it.

One declaration: kernels/fa_kernel_args.h (which [[buffer(n)]] of which kernel takes which logical buffer) and
csrc/plan/fa_buffers.h (the logical buffers: ids, names, element sizes, host memory, written-by). Readers: the MSL
kernels (which write the indices as numbers, so they are parsed here and compared), the dispatch plan (its bindings,
from describe_plan), the Metal and simulator bindings (they call the table's accessors; tests/test_objc_*.py run
them), and the Cython layer (its device-buffer slots are the table's enum; checked here through the ABI's per-slot
checks). The tables as the compiler sees them come from tests/core/kernel_args_dump.cpp, built with the plan's sources.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from _metal_support import describe_forward, dtype_name, host_view, rand

from _paths import ROOT, TESTS
KERNELS = ROOT / "kernels"
DEMO_KERNELS = {"example_reduce"}  # the simulator's example (kernels/README.md), not a kernel the plan runs


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict:
    cxx = next((c for c in (os.environ.get("CXX"), "g++", "clang++", "clang++-19") if c and shutil.which(c)), None)
    if cxx is None:
        pytest.skip("no C++ compiler to build tests/core/kernel_args_dump.cpp")
    plan_dir = ROOT / "csrc" / "plan"
    sources = sorted(str(p) for p in plan_dir.glob("*.cpp") if p.name != "fa_plan_json.cpp")
    exe = tmp_path_factory.mktemp("kernel_args") / "dump"
    cmd = [cxx, "-std=c++17", "-O0", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'kernels'}",
           f"-I{plan_dir}", str(TESTS / "core" / "kernel_args_dump.cpp"), *sources, "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(run.stdout)


# ---- the MSL sources, parsed ---------------------------------------------------------------------------------------
def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _balanced(text: str, start: int) -> str:
    """The text inside the parentheses opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i]
    raise AssertionError("unbalanced parentheses")


def _split_top(params: str) -> list:
    out, depth, cur = [], 0, ""
    for ch in params:
        depth += {"(": 1, "<": 1, "[": 1, ")": -1, ">": -1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def msl_kernels() -> tuple[dict, dict]:
    """(entry point -> {parameter: [[buffer(n)]]}, host name -> entry point) over kernels/*.metal and *.h."""
    functions, host_names = {}, {}
    for path in sorted(KERNELS.glob("*.metal")) + sorted(KERNELS.glob("*.h")):
        text = _strip_comments(path.read_text())
        for m in re.finditer(r"\[\[kernel\]\]\s*void\s+(\w+)\s*\(", text):
            buffers = {}
            for param in _split_top(_balanced(text, m.end() - 1)):
                b = re.search(r"(\w+)\s*\[\[\s*buffer\s*\(\s*(\w+)\s*\)\s*\]\]", param)
                if b:
                    buffers[b.group(1)] = int(b.group(2))
            functions[m.group(1)] = buffers
        for m in re.finditer(r'host_name\("(\w+)"\)\]\]\s*\[\[kernel\]\]\s*decltype\((\w+)', text):
            assert m.group(1) not in host_names, f"{m.group(1)} instantiated twice"
            host_names[m.group(1)] = m.group(2)
    return functions, host_names


def _signature(family: dict, params_index: int) -> dict:
    sig = {a["param"]: a["index"] for a in family["signature"]}
    sig["p"] = params_index  # the constant block
    return sig


# ---- the tables agree with the kernels -----------------------------------------------------------------------------
def test_every_kernel_declares_exactly_its_signature(tables):
    """Each kernel's [[buffer(n)]] parameters, parsed from the MSL, are exactly its family's signature: same
    parameter names at the same indices, the constant block `p` at FA_KERNEL_PARAMS_INDEX."""
    functions, host_names = msl_kernels()
    families = {f["name"]: f for f in tables["families"]}
    checked = set()
    for k in tables["kernels"]:
        fn = host_names.get(k["name"])
        assert fn is not None, f"the plan can launch {k['name']}, which no kernels/*.metal instantiates"
        want = _signature(families[k["family"]], tables["params_index"])
        assert functions[fn] == want, f"{k['name']} ({fn}): kernel declares {functions[fn]}, table says {want}"
        checked.add(fn)
    # every entry point the plan reaches was compared (attention, vector decode, merge, probs, append, backward x 3)
    assert checked == set(functions) - DEMO_KERNELS


def test_plan_names_exactly_the_shipped_kernels(tables):
    """The names fa_kernel_name derives are the host names of the kernels, no more and no fewer: no kernel is
    unreachable and no plan can ask for a kernel that was not compiled."""
    _, host_names = msl_kernels()
    derived = [k["name"] for k in tables["kernels"]]
    assert len(derived) == len(set(derived)), "two descriptors share a kernel name"
    assert set(derived) == set(host_names) - DEMO_KERNELS


def test_table_invariants(tables):
    """Indices are unique per signature and below the constant block; each logical buffer appears once per
    signature; the slot order is the ABI's device-buffer order (fa_abi.h's FA_DEVICE_BUFFER_SLOTS holds them)."""
    assert tables["params_index"] == tables["arg_slots"] - 1
    names = [b["name"] for b in tables["buffers"]]
    assert len(names) == len(set(names)) <= 32
    assert [b["id"] for b in tables["buffers"]] == list(range(len(names)))
    for f in tables["families"]:
        idx = [a["index"] for a in f["signature"]]
        bufs = [a["buffer"] for a in f["signature"]]
        assert len(set(idx)) == len(idx) and all(0 <= i < tables["params_index"] for i in idx), f["name"]
        assert len(set(bufs)) == len(bufs) and set(bufs) <= set(names) - {"scratch3"}, f["name"]
    by_name = {b["name"]: b for b in tables["buffers"]}
    # outputs per plan kind (forward, backward, append) and what the simulator may compare between schedules
    assert by_name["out"]["written"] == [1, 0, 1] and by_name["dq"]["written"] == [0, 1, 0]
    assert by_name["k"]["written"] == [0, 0, 1] and by_name["knew"]["written"] == [0, 0, 0]
    assert by_name["scratch3"]["written"] == [0, 0, 0]  # the placeholder: never touched
    assert by_name["lse"]["element_bytes_f16"] == 4 and by_name["q"]["element_bytes_f16"] == 2


# ---- the plan binds what the tables say ----------------------------------------------------------------------------
def _check_plan(plan: dict, tables: dict) -> set:
    families = {f["name"]: f for f in tables["families"]}
    for launch in plan["launches"]:
        fam = families[launch["family"]]
        # the name is the family's pattern with the template constants filled in (and nothing else)
        name = fam["pattern"]
        for c in launch["specialization"]:
            assert c["index"] == -1  # today's kernels specialise by template only
            name = name.replace("{%s}" % c["name"], str(c["value"]))
        assert launch["kernel"] == name
        # every signature index bound exactly once: to its logical buffer or to the placeholder
        bound = {b["index"]: b["buffer"] for b in launch["bindings"]}
        assert len(bound) == len(launch["bindings"])
        assert bound.keys() == {a["index"] for a in fam["signature"]}, launch["kernel"]
        for a in fam["signature"]:
            assert bound[a["index"]] in (a["buffer"], "scratch3"), (launch["kernel"], a)
        assert launch["constants_index"] == tables["params_index"]
        assert launch["constants_size"] == fam["constant_block_bytes"]
    return {launch["family"] for launch in plan["launches"]}


def test_plans_bind_by_the_table(tables, rng, monkeypatch):
    seen = set()
    for sq, sk, hq, hkv in [(37, 45, 4, 2), (1, 3000, 8, 2), (2, 100, 8, 2), (1, 5, 4, 4)]:
        q, k = rand(rng, (2, sq, hq, 64), "fp16"), rand(rng, (2, sk, hkv, 64), "fp16")
        probs = np.zeros((2, hq, sq, sk), np.float32)
        seen |= _check_plan(describe_forward(q, k, k, lse_shape=(2, hq, sq), attn_probs=probs), tables)
    q, k = rand(rng, (1, 1, 4, 96), "fp32"), rand(rng, (1, 2048, 4, 96), "fp32")
    seen |= _check_plan(describe_forward(q, k, k, lse_shape=(1, 4, 1), num_splits=3), tables)  # split + merge
    from flash_attn_cy import _core
    q, k = rand(rng, (2, 40, 4, 80), "fp32"), rand(rng, (2, 50, 2, 80), "fp32")
    out, lse = np.zeros_like(q), np.zeros((2, 4, 40), np.float32)
    grads = [np.zeros_like(q), np.zeros_like(k), np.zeros_like(k)]
    seen |= _check_plan(_core.describe_plan("backward", "sim", "float32", q, q, k, k, out, lse, *grads,
                                            softmax_scale=0.125), tables)
    kc, knew = rand(rng, (2, 32, 2, 64), "fp16"), rand(rng, (2, 3, 2, 64), "fp16")
    q = rand(rng, (2, 1, 4, 64), "fp16")
    seen |= _check_plan(_core.describe_plan("kvcache", "sim", dtype_name(q.dtype), host_view(q), host_view(kc),
                                            host_view(kc.copy()), host_view(knew), host_view(knew.copy()),
                                            softmax_scale=0.125, seqused_k=np.array([1, 5], np.int32)), tables)
    # the blocked-accumulation families (long sequences), reached on small shapes through the plans' test overrides:
    # no split partials (513 key tiles of 32 in one split: fa_fwd_long_*), one fp32 addition per running sum
    # (fa_bwd_dq_long_*, fa_bwd_dkdv_long_*)
    monkeypatch.setenv("FLASH_ATTN_CY_TEST_FORCED_PARTIAL_BYTES", "0")
    monkeypatch.setenv("FLASH_ATTN_CY_TEST_MAX_BWD_ADDS", "1")
    q, k = rand(rng, (1, 40, 2, 64), "fp16"), rand(rng, (1, 513 * 32, 2, 64), "fp16")
    seen |= _check_plan(describe_forward(q, k, k, lse_shape=(1, 2, 40), num_splits=1), tables)
    q, k = rand(rng, (2, 40, 4, 80), "fp32"), rand(rng, (2, 50, 2, 80), "fp32")
    seen |= _check_plan(_core.describe_plan("backward", "sim", "float32", q, q, k, k, out, lse, *grads,
                                            softmax_scale=0.125), tables)
    assert seen == {f["name"] for f in tables["families"]}  # every family exercised


# ---- the Cython layer's device-buffer slots are the table's ----------------------------------------------------------
_handles = itertools.count(1)


def _device(shape, short=False):
    """A float32 tensor in its own (fake, never dereferenced) MTLBuffer; `short`: one element too small."""
    from flash_attn_cy import _core
    strides = tuple(int(np.prod(shape[i + 1:])) for i in range(4))
    nbytes = 4 * int(np.prod(shape)) - (4 if short else 0)
    return _core.DeviceTensor(0x100000 * next(_handles), 0, nbytes, shape, strides)


@pytest.mark.parametrize("kind,arg,name", [
    ("forward", 2, "q"), ("forward", 3, "k"), ("forward", 4, "v"), ("forward", 5, "out"),
    ("backward", 2, "dout"), ("backward", 3, "q"), ("backward", 8, "dq"), ("backward", 9, "dk"), ("backward", 10, "dv"),
    ("kvcache", 5, "k"), ("kvcache", 6, "v"),
])
def test_device_slots_follow_the_table(kind, arg, name):
    """A Metal tensor one element short is refused naming the argument the ABI's check reads from that tensor's
    slot (csrc/fa_check.cpp indexes fa_device_buffers by fa_buffer_id): so _core.pyx stored each tensor in the slot the
    table gives it."""
    from flash_attn_cy import _core
    qs, ks, ns = (1, 4, 2, 16), (1, 8, 2, 16), (1, 2, 2, 16)
    shapes = {"forward": [qs, ks, ks, qs], "backward": [qs, qs, ks, ks, qs, None, qs, ks, ks],
              "kvcache": [qs, ks, ks, ns, ns]}[kind]
    args = [_device(s, short=(i + 2 == arg)) if s is not None else None for i, s in enumerate(shapes)]
    kw = dict(softmax_scale=0.25)
    if kind == "backward":
        args[5] = _core.DeviceTensor(0x100000 * next(_handles), 0, 4 * 2 * 4, (1, 2, 4), (8, 4, 1))  # lse
        kw["seqused_k"] = None
    if kind == "kvcache":
        kw["seqused_k"] = np.array([3], np.int32)
    kw = {k: v for k, v in kw.items() if v is not None}
    with pytest.raises(ValueError, match=rf"^{name}: view needs"):
        _core.describe_plan(kind, "metal", "float32", *args, **kw)
