#!/usr/bin/env bash
# What is pending on the GPU in session 12, in one device call (H200, ~5 minutes plus start), writing under OUTDIR:
#
#   bash bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]      # default limit 330 s for the whole job
#
# 1. GPU tests: the FP8 kernel after moving P's e4m3 rounding under the next QK^T (against float64 at head dims 128
#    and 64, ping-pong bit-identical) and lazy rescaling in both kernels (plain and peaked inputs);
# 2. bench/fp8_check.py: FP8 correctness (its rel RMS must equal the previous run's: same operations) and speed with
#    the pre-pass, cuDNN and bf16 in the same run;
# 3. bench/pingpong_check.py --switch lazy: lazy rescaling against the default, alternated, every shape;
# 4. bench/softmax_ceiling.py (bf16 / FP8 floors).
# Every step runs under `timeout` within what is left of the limit, so the job ends in time and keeps what finished.
# The device returns at most 8 files: at the end everything under OUTDIR is packed into OUTDIR.tar.gz (one file)
# and OUTDIR removed, so put OUTDIR under $OUT (e.g. $OUT/r -> $OUT/r.tar.gz).
set -uo pipefail
OUT=${1:?usage: bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]}
LIMIT=${2:-330}
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
run 40 fp8-check.log python3 bench/fp8_check.py --out "$OUT"
run 150 gpu-tests.log python3 -m pytest -q -m gpu tests/test_kernel_fp8.py tests/test_kernel_gluon.py \
    -k "fp8_matches_float64 or fp8_pingpong or lazy" -p no:cacheprovider
run 100 lazy-check.log python3 bench/pingpong_check.py --switch lazy --fp8-slack 4 --rounds 3 --out "$OUT"
run 40 softmax-ceiling.log python3 bench/softmax_ceiling.py --out "$OUT"
echo "[$SECONDS s] done" | tee -a "$OUT/job.log"
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")" && rm -rf "$OUT" && echo "packed $OUT.tar.gz"
