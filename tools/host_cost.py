"""Host cost per call of the public functions on tiny shapes, side by side with torch's SDPA in one process.

    python tools/host_cost.py [--repeat N] [--profile NAME]

Shapes: 1 thread, batch 1, 4 query heads over 2 KV heads, head dim 64, seqlen 1 and 16, float32, CPU backend.
Each figure is the best over `--rounds` rounds of the mean time of `--repeat` back-to-back calls (us per call); the
rounds of all cases interleave, so that load from other processes on the machine hits every case alike.
The same tiny compute runs in every call, so "host cost" here is the whole call as a user sees it; SDPA is the
yardstick (its own argument checks + dispatch + the same tiny compute).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import flash_attn_cy as fa


def timeit(fns, repeat, rounds, clock):
    """{name: fn} -> {name: best us per call}, rounds interleaved."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        for _ in range(max(50, repeat // 10)):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = clock()
            for _ in range(repeat):
                fn()
            best[name] = min(best[name], (clock() - t0) / repeat * 1e6)
    return best


def cases(seqlen):
    """(function, input kind) -> a call; ("sdpa", ...) the yardsticks. flash_attn_func attends seqlen queries to
    seqlen keys (causal), against SDPA on the same shapes; flash_attn_with_kvcache appends one row at cache_seqlens =
    seqlen - 1 and attends 1 query to seqlen keys, against SDPA of 1 query over seqlen keys ("sdpa-decode") and against
    that plus the cache update a model makes itself for SDPA (two index_copy_, "sdpa-decode+append")."""
    rng = np.random.default_rng(0)
    B, H, HK, D, cap = 1, 4, 2, 64, 64

    def rand(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    qn, kn, vn = rand(B, seqlen, H, D), rand(B, seqlen, HK, D), rand(B, seqlen, HK, D)
    qt, kt, vt = (torch.from_numpy(x) for x in (qn, kn, vn))
    q1n, k1n, v1n = rand(B, 1, H, D), rand(B, 1, HK, D), rand(B, 1, HK, D)
    q1t, k1t, v1t = (torch.from_numpy(x) for x in (q1n, k1n, v1n))
    kc_n, vc_n = rand(B, cap, HK, D), rand(B, cap, HK, D)
    kc_t, vc_t = torch.from_numpy(kc_n.copy()), torch.from_numpy(vc_n.copy())
    lens_n = np.array([seqlen - 1], np.int32)
    lens_t = torch.from_numpy(lens_n.copy())
    # SDPA in its own layout (batch, heads, seq, dim); GQA through enable_gqa
    qs, ks, vs = (x.transpose(1, 2).contiguous() for x in (qt, kt, vt))
    q1s = q1t.transpose(1, 2).contiguous()
    kds, vds = (torch.from_numpy(x[:, :seqlen].copy()).transpose(1, 2).contiguous() for x in (kc_n, vc_n))
    kapp, vapp = kds.clone(), vds.clone()  # SDPA's decode step with the cache update a model does itself
    k1s, v1s = k1t.transpose(1, 2).contiguous(), v1t.transpose(1, 2).contiguous()
    pos = torch.tensor([seqlen - 1])
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def sdpa_append():
        kapp.index_copy_(2, pos, k1s)
        vapp.index_copy_(2, pos, v1s)
        return sdpa(q1s, kapp, vapp, enable_gqa=True)

    return {
        ("sdpa", "torch"): lambda: sdpa(qs, ks, vs, is_causal=True, enable_gqa=True),
        ("sdpa-decode", "torch"): lambda: sdpa(q1s, kds, vds, enable_gqa=True),
        ("sdpa-decode+append", "torch"): sdpa_append,
        ("flash_attn_func", "numpy"): lambda: fa.flash_attn_func(qn, kn, vn, causal=True, backend="cpu"),
        ("flash_attn_func", "torch"): lambda: fa.flash_attn_func(qt, kt, vt, causal=True, backend="cpu"),
        ("flash_attn_with_kvcache", "numpy"): lambda: fa.flash_attn_with_kvcache(
            q1n, kc_n, vc_n, k1n, v1n, cache_seqlens=lens_n, causal=True, backend="cpu"),
        ("flash_attn_with_kvcache", "torch"): lambda: fa.flash_attn_with_kvcache(
            q1t, kc_t, vc_t, k1t, v1t, cache_seqlens=lens_t, causal=True, backend="cpu"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--profile", default=None, help="cProfile one case: func:kind:seqlen")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (the process's CPU time: on a loaded "
                         "machine, time spent waiting for a core is left out)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fa.set_num_threads(1)
    if args.profile:
        import cProfile
        import pstats
        name, kind, sl = args.profile.split(":")
        fn = cases(int(sl))[(name, kind)]
        with torch.no_grad():
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(args.repeat):
                fn()
            pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return
    print(f"{'seqlen':>6} {'function':<26} {'input':<6} {'us/call':>8} {'SDPA us':>8} {'ratio':>6} "
          f"{'SDPA+cache':>10} {'ratio':>6}  ({args.clock} clock)")
    for seqlen in (1, 16):
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        times = timeit(cases(seqlen), args.repeat, args.rounds, clock)
        yardstick = {"flash_attn_func": times.pop(("sdpa", "torch")),
                     "flash_attn_with_kvcache": times.pop(("sdpa-decode", "torch"))}
        with_cache = times.pop(("sdpa-decode+append", "torch"))
        for (name, kind), t in times.items():
            sdpa = yardstick[name]
            extra = f"{with_cache:10.1f} {t / with_cache:6.2f}" if name == "flash_attn_with_kvcache" else ""
            print(f"{seqlen:>6} {name:<26} {kind:<6} {t:8.1f} {sdpa:8.1f} {t / sdpa:6.2f} {extra}")


if __name__ == "__main__":
    main()
