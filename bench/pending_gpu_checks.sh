#!/usr/bin/env bash
# What is pending on the GPU after session 10, in one device call (H200, ~4 minutes plus start), writing under OUTDIR:
#
#   bash bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]      # default limit 480 s for the whole job
#
# 1. GPU tests of the ping-pong variant of the Gluon kernel (bit-identical to the free-running warpgroups, and
#    against float64), of the public entry and of both kernels in compact tile order;
# 2. bench/pingpong_check.py: the Gluon kernel with and without FA3's ping-pong at hunyuan-720p (tile order, in
#    place, (5,5,5), mixed, d=64) and wan-480p, with cuDNN in the same run (issue #18's 12x stretch);
# 3. bench/softmax_ceiling.py again (the bf16/FP8 floor; measured in session 10);
# 4. bench/padded_canvas.py (last: measured in sessions 9 and 10).
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
run 220 gpu-tests.log python3 -m pytest -q -m gpu tests/test_kernel_api.py tests/test_kernel_gluon.py tests/test_kernel_fp8.py \
    tests/test_kernel_triton.py -k "pingpong or api or (compact and d128)" -p no:cacheprovider
run 150 pingpong.log python3 bench/pingpong_check.py --out "$OUT"
run 100 softmax-ceiling.log python3 bench/softmax_ceiling.py --out "$OUT"
run 130 padded-canvas.log python3 bench/padded_canvas.py --out "$OUT" --time-budget 100
echo "[$SECONDS s] done" | tee -a "$OUT/job.log"
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")" && rm -rf "$OUT" && echo "packed $OUT.tar.gz"
