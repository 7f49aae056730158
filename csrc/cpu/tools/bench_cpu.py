"""Standalone timing of the CPU backend against torch.nn.functional.scaled_dot_product_attention (same process, same
inputs, same thread count). Not a test: run by hand, e.g.

    python csrc/cpu/tools/bench_cpu.py                # default grid (a few minutes on 2 cores)
    python csrc/cpu/tools/bench_cpu.py --quick        # 2k only
    python csrc/cpu/tools/bench_cpu.py --decode       # 1 query against long caches
    python csrc/cpu/tools/bench_cpu.py --decode --threads 1 --cpu-time   # a shared machine: 1 thread, CPU time

Columns: ours / torch in ms (best of N), ratio torch/ours (>1 = we are faster), GFLOP/s of ours
(4*b*h*sq*sk*d, halved for causal), and share of the machine's fp32 matmul throughput (torch.matmul 2048^3).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import flash_attn_cy as fa


# Wall time by default; --cpu-time switches to the calling thread's CPU time, meaningful with --threads 1 when other
# processes compete for the cores (both sides are then charged only for their own work).
clock = time.perf_counter


def best_time(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def best_times_interleaved(fa_fn, torch_fn, reps: int) -> tuple:
    """Best-of-reps for both, alternating calls so that both see the same background load (shared machines)."""
    fa_fn()
    torch_fn()
    ours = theirs = float("inf")
    for _ in range(reps):
        t = clock()
        fa_fn()
        ours = min(ours, clock() - t)
        t = clock()
        torch_fn()
        theirs = min(theirs, clock() - t)
    return ours, theirs


def matmul_peak(threads: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = best_time(lambda: a @ b, 5)
    return 2 * 2048 ** 3 / t / 1e9


TORCH_DT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def case(dt: str, b: int, h: int, sq: int, sk: int, d: int, causal: bool, reps: int, peak: float) -> dict:
    g = torch.Generator().manual_seed(0)
    # torch's preferred layout (b, h, s, d) contiguous; ours (b, s, h, d) contiguous: each gets its natural layout.
    tq, tk, tv = (torch.randn(b, h, n, d, generator=g).to(TORCH_DT[dt]) for n in (sq, sk, sk))
    q, k, v = (x.transpose(1, 2).contiguous() for x in (tq, tk, tv))
    with torch.no_grad():
        ours, theirs = best_times_interleaved(
            lambda: fa.flash_attn_func(q, k, v, causal=causal, backend="cpu"),
            lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal), reps)
    flops = 4 * b * h * sq * sk * d * (0.5 if causal else 1.0)
    gfs = flops / ours / 1e9
    return dict(dt=dt, b=b, h=h, sq=sq, sk=sk, d=d, causal=causal, ours=ours, torch=theirs, ratio=theirs / ours,
                gfs=gfs, peak=gfs / peak)


def decode_case(dt: str, b: int, h: int, hk: int, sk: int, d: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, 1, h, d, generator=g).to(TORCH_DT[dt])
    kc = torch.randn(b, sk, hk, d, generator=g).to(TORCH_DT[dt])
    vc = torch.randn(b, sk, hk, d, generator=g).to(TORCH_DT[dt])
    seqlens = torch.full((b,), sk, dtype=torch.int32)
    # torch in its own layout (b, h, s, d) contiguous, reading the hk K/V heads once (enable_gqa)
    tq = q.transpose(1, 2).contiguous()
    tk = kc.transpose(1, 2).contiguous()
    tv = vc.transpose(1, 2).contiguous()
    gqa = {"enable_gqa": True} if hk != h else {}
    with torch.no_grad():
        ours, theirs = best_times_interleaved(
            lambda: fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, backend="cpu"),
            lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, **gqa), reps)
    gbs = 2 * b * sk * hk * d * kc.element_size() / ours / 1e9
    return dict(dt=dt, b=b, h=h, hk=hk, sk=sk, d=d, ours=ours, torch=theirs, ratio=theirs / ours, gbs=gbs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--decode", action="store_true")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16")
    ap.add_argument("--seqlens", default="")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="threads for both sides (default: ours' default)")
    ap.add_argument("--cpu-time", action="store_true", help="time with the thread's CPU time (use with --threads 1)")
    args = ap.parse_args()
    global clock
    if args.cpu_time:
        clock = time.thread_time
    if args.threads:
        fa.set_num_threads(args.threads)
    threads = fa.get_num_threads()
    torch.set_num_threads(threads)
    peak = matmul_peak(threads)
    print(f"threads={threads}  torch {torch.__version__}  fp32 matmul (2048^3) peak {peak:.1f} GFLOP/s")
    dts = args.dtypes.split(",")
    if args.decode:
        print(f"{'dtype':5s} {'b':>2s} {'h':>3s} {'hk':>3s} {'cache':>6s} {'d':>4s} {'ours ms':>9s} {'torch ms':>9s} "
              f"{'ratio':>6s} {'KV GB/s':>8s}")
        for dt in dts:
            grid = [(1, 32, 32, 4096, 128), (1, 32, 8, 8192, 128), (4, 16, 16, 4096, 64), (1, 8, 8, 16384, 128)]
            if args.seqlens:  # every cache length with MHA and GQA, d 64 and 128, batch 1 and 4
                grid = [(b, 16, hk, int(sk), d) for b in (1, 4) for hk in (16, 4) for d in (64, 128)
                        for sk in args.seqlens.split(",")]
            for (b, h, hk, sk, d) in grid:
                r = decode_case(dt, b, h, hk, sk, d, args.reps)
                print(f"{dt:5s} {b:2d} {h:3d} {hk:3d} {sk:6d} {d:4d} {r['ours']*1e3:9.3f} {r['torch']*1e3:9.3f} "
                      f"{r['ratio']:6.2f} {r['gbs']:8.1f}", flush=True)
        return
    seqlens = [int(s) for s in args.seqlens.split(",")] if args.seqlens else ([2048] if args.quick else
                                                                              [512, 2048, 8192])
    print(f"{'dtype':5s} {'b':>2s} {'h':>3s} {'seqlen':>6s} {'d':>4s} {'causal':>6s} {'ours ms':>9s} {'torch ms':>9s} "
          f"{'ratio':>6s} {'GFLOP/s':>8s} {'%peak':>6s}")
    for dt in dts:
        for s in seqlens:
            b, h = (4, 16) if s <= 512 else ((1, 16) if s <= 2048 else (1, 8))
            for d in (64, 128):
                for causal in (False, True):
                    r = case(dt, b, h, s, s, d, causal, args.reps if s < 8192 else max(1, args.reps // 2), peak)
                    print(f"{dt:5s} {b:2d} {h:3d} {s:6d} {d:4d} {int(causal):6d} {r['ours']*1e3:9.2f} "
                          f"{r['torch']*1e3:9.2f} {r['ratio']:6.2f} {r['gfs']:8.1f} {100*r['peak']:5.0f}%", flush=True)


if __name__ == "__main__":
    main()
