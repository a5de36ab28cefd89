#!/usr/bin/env bash
# What session 8 could not run on the GPU, in one device call (H200, ~8 minutes), writing under OUTDIR:
#
#   bash bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]      # default limit 560 s for the whole job
#
# 1. GPU tests of the profiler (not run since b493a9d) and of the fused pass in compact tile order
#    (kernels.backends.FUSED_RECALL_COMPACT_PADDED, off until these pass), plus the Gluon compact-order tests (its
#    host side was refactored after its last GPU run) and both kernels at the wan-480p model shape;
# 2. bench/compact_overhead.py: host vs device time of the compact natural-order call after the host-stall fix;
# 3. bench/padded_canvas.py: effective rate of wan-480p / wan-720p against hunyuan-720p in one run;
# 4. bench/e2e.py: Wan 2.1 1.3B 480p compiled, (3,3,3) (target 1.8x per forward);
# 5. bench/profile_speed.py at wan-480p with the fused pass in boxes and in compact order.
# Every step runs under `timeout` within what is left of the limit, so the job ends in time and keeps what finished.
set -uo pipefail
OUT=${1:?usage: bench/pending_gpu_checks.sh OUTDIR [LIMIT_SECONDS]}
LIMIT=${2:-560}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SECONDS=0
run() {  # run SECONDS_WANTED LOGNAME command...: bounded by what is left of LIMIT
    local want=$1 log=$2; shift 2
    local left=$((LIMIT - SECONDS))
    if [ "$left" -le 10 ]; then echo "skipped (no time left): $*" | tee -a "$OUT/job.log"; return; fi
    local t=$(( want < left ? want : left ))
    echo "[$SECONDS s] $* (limit ${t} s)" | tee -a "$OUT/job.log"
    timeout -k 5 "$t" "$@" > "$OUT/$log" 2>&1
    echo "[$SECONDS s] rc=$? $(tail -n 1 "$OUT/$log")" | tee -a "$OUT/job.log"
}
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/gpu.txt" 2>&1
run 200 gpu-tests-recall-stats.log python3 -m pytest -q -m gpu tests/test_recall_gluon.py tests/test_stats.py \
    -p no:cacheprovider
run 60 compact-overhead.log python3 bench/compact_overhead.py --out "$OUT"
run 100 e2e-wan-1.3b.log python3 bench/e2e.py --spec wan-1.3b-480p --windows 3,3,3 --backends gluon \
    --compiled-backends gluon --compile on --reps 3 --no-native --out "$OUT/e2e-wan-1.3b-480p.json"
# the profiler at wan-480p with the fused pass in tile-plane boxes and in compact tile order (same run)
for mode in off on; do
    run 45 profile-speed-wan480p-compact-$mode.log python3 bench/profile_speed.py --canvas 21,30,52 --heads 12 \
        --text-len 0 --fused-compact $mode --out "$OUT/profile-speed-wan480p-compact-$mode.json"
done
run 130 padded-canvas.log python3 bench/padded_canvas.py --out "$OUT" --time-budget 100
run 100 gpu-tests-kernels.log python3 -m pytest -q -m gpu tests/test_kernel_gluon.py tests/test_kernel_triton.py \
    -k "(compact and d128) or (model_shapes and wan)" -p no:cacheprovider
echo "[$SECONDS s] done" | tee -a "$OUT/job.log"
