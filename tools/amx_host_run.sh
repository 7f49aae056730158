#!/usr/bin/env bash
# amx_host_run.sh - what issue 20 still needs from a many-core Intel machine with AMX, as two stages that each fit
# one 10-minute command of the lent machine (the device tool), or run by hand on any such machine.
#
#   bash tools/amx_host_run.sh check [OUTDIR]   the AMX probe, the AMX and auto-path tests, AVX-512 vs AMX side by side
#   bash tools/amx_host_run.sh scale [OUTDIR]   thread scaling 1/4/16 (also with OMP_WAIT_POLICY=PASSIVE), decode
#                                               against a copy of the same bytes at 16 threads
#
# Run from the repository root. OUTDIR defaults to $OUT (the device tool's folder), else ./amx-run; each stage
# leaves at most four files there. Needs python3 with torch and numpy. meson-python, Cython, ninja and pytest come
# from the environment, else from wheels in .whl/ (the device host has none of them; see the device tool's README
# for `pip download`). The package is built into /tmp/fa-build, once per machine.
set -u -o pipefail
stage=${1:?usage: amx_host_run.sh check|scale [OUTDIR]}
out=${2:-${OUT:-amx-run}}
mkdir -p "$out"
root=$(pwd)
export PYTHONUNBUFFERED=1

if ! python3 -c "import mesonpy, Cython, pytest" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
fi
if ! (cd /tmp && python3 -c "import flash_attn_cy" 2>/dev/null); then
    python3 -m pip install -q --no-build-isolation --no-deps -Cbuild-dir=/tmp/fa-build . >"$out/build.log" 2>&1 ||
        { tail -40 "$out/build.log"; exit 1; }
fi
bench() { (cd /tmp && python3 -m flash_attn_cy bench --quiet "$@"); }

case "$stage" in
check)
    {
        lscpu
        gcc -O2 -o /tmp/amx_probe "$root/tools/amx_probe.c" -lm && /tmp/amx_probe
        (cd /tmp && python3 -m flash_attn_cy info)
    } 2>&1 | tee "$out/machine.txt"
    (cd tests && timeout 330 python3 -m pytest -q -p no:cacheprovider cpu/test_cpu_isa_amx.py cpu backward \
        -k "amx or auto") 2>&1 | tail -60 | tee "$out/tests.txt"
    bench --cpu-isa avx512,amx --dtypes bf16,fp16 --seqlens 512,2048,8192 --headdims 64,128 --heads 8 \
        --threads 16 --json "$out/isa.json" 2>&1 | tee "$out/isa.txt"
    ;;
scale)
    bench --threads 1,4,16 --json "$out/threads.json" 2>&1 | tee "$out/threads.txt"
    bench --decode --seqlens 4096,32768 --heads 32 --kv-heads 8 --headdims 128 --dtypes fp32,fp16,bf16 \
        --batch 1 --threads 16 2>&1 | tee "$out/decode.txt"
    bench --decode --seqlens 4096,32768 --heads 32 --kv-heads 8 --headdims 128 --dtypes fp32,bf16 \
        --batch 8 --threads 16 2>&1 | tee -a "$out/decode.txt"
    ;;
*)
    echo "amx_host_run.sh: unknown stage '$stage' (check or scale)" >&2
    exit 2
    ;;
esac
