#!/usr/bin/env bash
# What is pending on the GPU after session 14, in one device call (H200, ~2 minutes plus start), writing under OUTDIR:
#
#   bash bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]      # default limit 240 s for the whole job
#
# 1. bench/power_check.py: time, SM clock and board power of the bf16 / fp8 / int8 STA calls and cuDNN dense, each
#    run sustained alone and then after a layer's worth of GEMMs (session 14 found the H200 power-capped at 1.45-1.62
#    GHz inside HunyuanVideo, where the FP8 kernel takes 23.1 ms a call against 19.2 ms isolated). Not run yet.
# Every step runs under `timeout` within what is left of the limit, so the job ends in time and keeps what finished.
# The device returns at most 8 files: at the end everything under OUTDIR is packed into OUTDIR.tar.gz (one file)
# and OUTDIR removed, so put OUTDIR under $OUT (e.g. $OUT/r -> $OUT/r.tar.gz).
set -uo pipefail
OUT=${1:?usage: bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]}
LIMIT=${2:-240}
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
run 200 power-check.log python3 bench/power_check.py --out "$OUT" --seconds 4
echo "[$SECONDS s] done" | tee -a "$OUT/job.log"
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")" && rm -rf "$OUT" && echo "packed $OUT.tar.gz"
