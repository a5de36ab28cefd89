#!/usr/bin/env bash
# What is pending on the GPU after session 12, in one device call (H200, ~5 minutes plus start), writing under OUTDIR:
#
#   bash bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]      # default limit 360 s for the whole job
#
# 1. GPU tests of gluon_fp8.SUM_MMA and gluon_fwd.DEFAULT_SUM_MMA (the softmax row sums from a wgmma of P with a
#    block of ones; compiled for sm_90 in session 12: FP8 loop 474 -> 413 SASS instructions, bf16 445 -> 406, d64
#    406 -> 355; never run) against float64 and the default kernels;
# 2. bench/pingpong_check.py --switch summma: both kernels with and without it, alternated, cuDNN in the same run;
# 3. bench/fp8_check.py (FP8 vs bf16 vs cuDNN, correctness cases).
# Every step runs under `timeout` within what is left of the limit, so the job ends in time and keeps what finished.
# The device returns at most 8 files: at the end everything under OUTDIR is packed into OUTDIR.tar.gz (one file)
# and OUTDIR removed, so put OUTDIR under $OUT (e.g. $OUT/r -> $OUT/r.tar.gz).
set -uo pipefail
OUT=${1:?usage: bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]}
LIMIT=${2:-360}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SECONDS=0
run() {  # run SECONDS_WANTED LOGNAME command...: bounded by what is left of LIMIT
    local want=$1 log=$2; shift 2
    local left=$((LIMIT - 15 - SECONDS))
    if [ "$left" -le 10 ]; then echo "skipped (no time left): $*" | tee -a "$OUT/job.log"; return; fi
    local t=$(( want < left ? want : left ))
    echo "[$SECONDS s] $* (limit ${t} s)" | tee -a "$OUT/job.log"
    timeout -k 5 "$t" "$@" > "$OUT/$log" 2>&1
    echo "[$SECONDS s] rc=$? $(tail -n 1 "$OUT/$log")" | tee -a "$OUT/job.log"
}
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/gpu.txt" 2>&1
run 150 gpu-tests.log python3 -m pytest -q -m gpu tests/test_kernel_fp8.py tests/test_kernel_gluon.py \
    -k "row_sums_on_the_tensor_core" -p no:cacheprovider -s
run 60 summma-check.log python3 bench/pingpong_check.py --switch summma --rounds 5 \
    --shapes hunyuan-720p-333-fp8-kernel hunyuan-720p-333-tiled hunyuan-720p-333-in-place \
    hunyuan-720p-333-d64-tiled wan-480p-333-compact --out "$OUT"
run 60 fp8-check.log python3 bench/fp8_check.py --out "$OUT"
echo "[$SECONDS s] done" | tee -a "$OUT/job.log"
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")" && rm -rf "$OUT" && echo "packed $OUT.tar.gz"
