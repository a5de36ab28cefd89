#!/usr/bin/env bash
# What is pending on the GPU after session 11, in one device call (H200, ~6 minutes plus start), writing under OUTDIR:
#
#   bash bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]      # default limit 480 s for the whole job
#
# 1. GPU tests of the FP8 kernel in its final form (session 11 made V^T's v_column order and the exponent-shifted
#    P its only path; measured and tested behind switches, not yet as shipped) and of FP8 at head dim 64 (refused by
#    gluon_fp8.HEAD_DIMS until this passes);
# 2. bench/fp8_check.py: FP8 correctness and speed with the pre-pass, cuDNN and bf16 in the same run;
# 3. bench/softmax_ceiling.py (bf16 / FP8 floors with the new FP8 path).
# End to end (a call of its own, ~8 minutes): python3 bench/e2e.py --spec hunyuan-720p --windows 3,3,3
#   --backends gluon --compile on --compiled-backends gluon --no-native --reps 2 --precision fp8 --out $OUT/e2e.json
# Every step runs under `timeout` within what is left of the limit, so the job ends in time and keeps what finished.
# The device returns at most 8 files: at the end everything under OUTDIR is packed into OUTDIR.tar.gz (one file)
# and OUTDIR removed, so put OUTDIR under $OUT (e.g. $OUT/r -> $OUT/r.tar.gz).
set -uo pipefail
OUT=${1:?usage: bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]}
LIMIT=${2:-480}
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
run 260 gpu-tests.log python3 -m pytest -q -m gpu tests/test_kernel_fp8.py \
    -k "matches_float64 or prepass or close_to_bf16 or refuses" -p no:cacheprovider
run 110 fp8-check.log python3 bench/fp8_check.py --out "$OUT"
run 100 softmax-ceiling.log python3 bench/softmax_ceiling.py --out "$OUT"
echo "[$SECONDS s] done" | tee -a "$OUT/job.log"
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")" && rm -rf "$OUT" && echo "packed $OUT.tar.gz"
