"""Times the CPU backend's kernel sets (FLASH_ATTN_CY_CPU_ISA=avx2 / avx512 / portable) side by side with
torch.nn.functional.scaled_dot_product_attention in one process: forward (B1 H8) and decode (1 query, 32 query heads
over 8 KV heads). Not a test: run by hand, e.g.

    python csrc/cpu/tools/bench_isa.py --threads 1            # 1 thread, calling thread's CPU time (shared machines)
    python csrc/cpu/tools/bench_isa.py --isas avx2,portable --seqlens 512,2048 --headdims 64,128

Calls alternate between the sides (round robin, best of --reps), so all see the same background load. Columns: ms
per call for each side, then torch/ours ratios (> 1: ours faster) and ours/portable speed-ups.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import flash_attn_cy as fa

TORCH_DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def interleaved_best(fns: dict, reps: int, clock) -> dict:
    best = {name: float("inf") for name in fns}
    for name, fn in fns.items():  # warm-up (workspace, thread pool, kernel selection)
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            t = clock()
            fn()
            best[name] = min(best[name], clock() - t)
    return best


def with_isa(isa: str, fn):
    def run():
        os.environ["FLASH_ATTN_CY_CPU_ISA"] = isa
        try:
            return fn()
        finally:
            del os.environ["FLASH_ATTN_CY_CPU_ISA"]
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--isas", default="avx2,avx512,portable")
    ap.add_argument("--dtypes", default="fp32,fp16,bf16")
    ap.add_argument("--seqlens", default="512,2048")
    ap.add_argument("--headdims", default="64,128")
    ap.add_argument("--decode-keys", default="4096,16384")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    isas = args.isas.split(",")
    fa.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    # one thread: the calling thread's CPU time, so other processes on a shared machine do not count
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    for isa in isas:
        os.environ["FLASH_ATTN_CY_CPU_ISA"] = isa
        print(f"# {isa}: {fa.backends()['cpu']['description']}")
        del os.environ["FLASH_ATTN_CY_CPU_ISA"]
    cols = [f"{i} ms" for i in isas] + ["torch ms"] + [f"torch/{i}" for i in isas if i != "portable"]
    cols += [f"{i}/portable" for i in isas if i != "portable" and "portable" in isas]
    print("| case | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")

    def report(case, best):
        ms = {k: v * 1e3 for k, v in best.items()}
        row = [f"{ms[i]:.2f}" for i in isas] + [f"{ms['torch']:.2f}"]
        row += [f"{ms['torch'] / ms[i]:.2f}" for i in isas if i != "portable"]
        row += [f"{ms['portable'] / ms[i]:.2f}" for i in isas if i != "portable" and "portable" in isas]
        print(f"| {case} | " + " | ".join(row) + " |", flush=True)

    for dt in args.dtypes.split(","):
        for s in map(int, args.seqlens.split(",")):
            for d in map(int, args.headdims.split(",")):
                q, k, v = (torch.randn(1, s, 8, d, dtype=TORCH_DT[dt]) for _ in range(3))
                qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
                fns = {i: with_isa(i, lambda: fa.flash_attn_func(q, k, v, backend="cpu")) for i in isas}
                fns["torch"] = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
                report(f"fwd {dt} S{s} D{d}", interleaved_best(fns, args.reps, clock))
        for sk in map(int, args.decode_keys.split(",")):
            d = 128
            q = torch.randn(1, 1, 32, d, dtype=TORCH_DT[dt])
            kc, vc = (torch.randn(1, sk, 8, d, dtype=TORCH_DT[dt]) for _ in range(2))
            qt = q.transpose(1, 2)
            kt, vt = (x.transpose(1, 2) for x in (kc, vc))
            fns = {i: with_isa(i, lambda: fa.flash_attn_with_kvcache(q, kc, vc, backend="cpu")) for i in isas}
            fns["torch"] = lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
            report(f"decode {dt} 32/8 heads {sk} keys D{d}", interleaved_best(fns, args.reps, clock))


if __name__ == "__main__":
    main()
