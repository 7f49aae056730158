"""Out of memory: a call whose allocation fails raises MemoryError naming the size (not a RuntimeError, a crash or a
hang), and the process goes on working afterwards with bitwise the same results as before. The address space of a
subprocess is limited (RLIMIT_AS) to a little more than it uses, so the CPU backward's per-thread dQ partial buffers
(one q-sized fp32 buffer per thread, taken inside a worker thread) cannot be allocated, nor can a q-sized output."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux only")

SCRIPT = textwrap.dedent("""
    import json, resource
    import numpy as np
    import flash_attn_cy as fa

    def address_space():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))

    fa.set_num_threads(2)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 8192, 16, 128), dtype=np.float32)  # 64 MiB
    k, v = (rng.standard_normal((1, 16, 16, 128), dtype=np.float32) for _ in range(2))
    out, lse, _ = fa.flash_attn_func(q, k, v, return_attn_probs=True, backend="cpu")
    dout = np.ones_like(out)
    grads = [np.empty_like(x) for x in (q, k, v)]
    want = fa.backward(dout, q, k, v, out, lse, deterministic=True, backend="cpu")
    # (no non-deterministic backward before the limit: its dQ partials would wait in the buffer pool for reuse)
    report = {}
    resource.setrlimit(resource.RLIMIT_AS, (address_space() + (16 << 20), resource.RLIM_INFINITY))
    for name, call in [
        ("backward", lambda: fa.backward(dout, q, k, v, out, lse, backend="cpu", dq=grads[0], dk=grads[1],
                                         dv=grads[2])),
        ("forward", lambda: fa.flash_attn_func(q, k, v, backend="cpu")),
    ]:
        try:
            call()
            report[name] = "no error"
        except BaseException as e:
            report[name] = f"{type(e).__name__}: {e}"
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    again = fa.backward(dout, q, k, v, out, lse, deterministic=True, backend="cpu")
    report["after_backward_equal"] = all(np.array_equal(a, b) for a, b in zip(again, want))
    report["after_forward_equal"] = bool(np.array_equal(fa.flash_attn_func(q, k, v, backend="cpu"), out))
    print(json.dumps(report))
""")


def test_out_of_memory_is_a_memory_error_naming_the_size_and_the_process_recovers():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # the worker's dQ partial buffer: 8192 rows x 16 heads x 128 x 4 bytes
    assert report["backward"].startswith("MemoryError: out of memory: allocating 67108864 bytes failed"), report
    assert report["forward"].startswith("MemoryError: Unable to allocate 64.0 MiB"), report  # the output array
    assert report["after_backward_equal"] and report["after_forward_equal"], report
