"""Host cost per call of the public functions on tiny shapes, side by side with torch's SDPA in one process.

    python tools/host_cost.py [--repeat N] [--profile NAME]

Shapes: 1 thread, batch 1, 4 query heads over 2 KV heads, head dim 64, seqlen 1 (decode) and 16, CPU backend.
Each figure is the median over `--rounds` rounds of the mean time of `--repeat` back-to-back calls (us per call).
The same tiny compute runs in every call, so "host cost" here is the whole call as a user sees it; SDPA is the
yardstick (its own argument checks + dispatch + the same tiny compute).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import flash_attn_cy as fa


def timeit(fn, repeat, rounds):
    for _ in range(max(50, repeat // 10)):
        fn()
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        per.append((time.perf_counter() - t0) / repeat * 1e6)
    return statistics.median(per)


def cases(seqlen):
    rng = np.random.default_rng(0)
    B, H, HK, D = 1, 4, 2, 64
    qn = rng.standard_normal((B, seqlen, H, D), dtype=np.float32)
    kn = rng.standard_normal((B, seqlen, HK, D), dtype=np.float32)
    vn = rng.standard_normal((B, seqlen, HK, D), dtype=np.float32)
    qt, kt, vt = (torch.from_numpy(x) for x in (qn, kn, vn))
    # SDPA in its own layout (batch, heads, seq, dim), GQA expanded by enable_gqa
    qs, ks, vs = (x.transpose(1, 2).contiguous() for x in (qt, kt, vt))
    cap = 64
    kc_n = rng.standard_normal((B, cap, HK, D), dtype=np.float32)
    vc_n = rng.standard_normal((B, cap, HK, D), dtype=np.float32)
    kc_t, vc_t = torch.from_numpy(kc_n.copy()), torch.from_numpy(vc_n.copy())
    q1n = qn[:, :1].copy()
    k1n, v1n = kn[:, :1].copy(), vn[:, :1].copy()
    q1t, k1t, v1t = (torch.from_numpy(x) for x in (q1n, k1n, v1n))
    seqlens_n = np.array([seqlen], np.int32)
    seqlens_t = torch.tensor([seqlen], dtype=torch.int32)
    kf = dict(backend="cpu")
    out = {
        ("flash_attn_func", "numpy"): lambda: fa.flash_attn_func(qn, kn, vn, causal=True, **kf),
        ("flash_attn_func", "torch"): lambda: fa.flash_attn_func(qt, kt, vt, causal=True, **kf),
        ("flash_attn_with_kvcache", "numpy"): lambda: fa.flash_attn_with_kvcache(
            q1n, kc_n, vc_n, k1n, v1n, cache_seqlens=seqlens_n, causal=True, **kf),
        ("flash_attn_with_kvcache", "torch"): lambda: fa.flash_attn_with_kvcache(
            q1t, kc_t, vc_t, k1t, v1t, cache_seqlens=seqlens_t, causal=True, **kf),
        ("sdpa", "torch"): lambda: torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, enable_gqa=True),
    }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--profile", default=None, help="cProfile one case: func:kind:seqlen")
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
    print(f"{'seqlen':>6} {'function':<26} {'input':<6} {'us/call':>8} {'SDPA us':>8} {'ratio':>6}")
    for seqlen in (1, 16):
        cs = cases(seqlen)
        with torch.inference_mode(False):
            sdpa = timeit(cs[("sdpa", "torch")], args.repeat, args.rounds)
            for (name, kind), fn in cs.items():
                if name == "sdpa":
                    continue
                t = timeit(fn, args.repeat, args.rounds)
                print(f"{seqlen:>6} {name:<26} {kind:<6} {t:8.1f} {sdpa:8.1f} {t / sdpa:6.2f}")


if __name__ == "__main__":
    main()
