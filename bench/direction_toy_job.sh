#!/usr/bin/env bash
# The direction toy (bench/direction_toy.py) on one GPU, for many more steps than the CPU allows, in one device call:
#
#   bash bench/direction_toy_job.sh OUTDIR [SECONDS] [PLAN]      # default 420 s of training per run, plan width
#
# Several runs at once, one process each (the models are small; the GPU time-slices them). Batch 64, caption dropout
# 0.1, sampled with guidance 3 (plan width also scores guidance 1 and 6). Everything under OUTDIR is packed into
# OUTDIR.tar.gz. Plans:
#   variants (session 15): width 64; the caption names the direction for rope, coords, adaln and coords+adaln, and
#                          the colour for rope (the control).
#   width (session 16):    width 256, 4 layers: direction with rope, rope on the torus (--wrap), rope with the noise
#                          levels of train_small.py (--sigma-shift 3), coords+adaln; colour with rope (the control);
#                          and rope on the torus at width 64.
#   ablation (session 16): width 256, 4 layers: which half of coords+adaln carries the direction (coords with uniform
#                          and shifted noise levels, adaln with shifted ones), and a second seed of coords+adaln.
#   family (session 17):   width 256, 4 layers, shift 3, six-token captions (so attention to
#                          the caption depends on the query): Wan with the caption in cross-attention only (rope) and
#                          also in the modulation (adaln); a stock HunyuanVideo transformer with pooled text and without
#                          (hunyuan, hunyuan-nopool); the colour control.
#   arrow (session 20):    the family plan's Wan with the caption in cross-attention only (rope), on data with an
#                          arrow of time (--arrow trail, --arrow accel; two seeds each) and without (the baseline).
set -uo pipefail
OUT=${1:?usage: bench/direction_toy_job.sh OUTDIR [SECONDS] [PLAN]}
SECS=${2:-420}
PLAN=${3:-width}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/gpu.txt" 2>&1
common=(--device cuda --seconds "$SECS" --seeds 0 --batch 64 --caption-dropout 0.1 --guidance 3)
launch() {  # NAME ARGS...: one run in the background, its JSON under OUT/NAME and its log beside it
    local name=$1; shift
    python3 bench/direction_toy.py "${common[@]}" "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1 &
}
wide=(--size 4 64 4 --extra-guidance 1 6)  # width 256, 4 layers, also scored at guidance 1 and 6
case $PLAN in
    variants)
        for variant in rope coords adaln coords+adaln; do launch "direction-$variant" --variants "$variant"; done
        launch colour-rope --task colour --variants rope ;;
    width)
        launch direction-rope-w256 "${wide[@]}" --variants rope
        launch direction-rope-w256-wrap "${wide[@]}" --variants rope --wrap
        launch direction-rope-w256-shift3 "${wide[@]}" --variants rope --sigma-shift 3
        launch direction-coords+adaln-w256 "${wide[@]}" --variants coords+adaln
        launch colour-rope-w256 "${wide[@]}" --task colour --variants rope
        launch direction-rope-w64-wrap --extra-guidance 1 6 --variants rope --wrap ;;
    ablation)
        launch direction-coords-w256 "${wide[@]}" --variants coords
        launch direction-coords-w256-shift3 "${wide[@]}" --variants coords --sigma-shift 3
        launch direction-adaln-w256-shift3 "${wide[@]}" --variants adaln --sigma-shift 3
        launch direction-coords+adaln-w256-seed1 "${wide[@]}" --variants coords+adaln --seeds 1 ;;
    family)
        words=("${wide[@]}" --sigma-shift 3 --caption-words 6)
        for variant in rope adaln hunyuan hunyuan-nopool; do
            launch "direction-$variant-w256-shift3-words6" "${words[@]}" --variants "$variant"
        done
        launch colour-rope-w256-shift3-words6 "${words[@]}" --task colour --variants rope ;;
    arrow)
        words=("${wide[@]}" --sigma-shift 3 --caption-words 6 --variants rope)
        launch direction-rope-w256-shift3-words6 "${words[@]}"
        for arrow in trail accel; do
            for seed in 0 1; do
                launch "direction-rope-w256-shift3-words6-$arrow-seed$seed" "${words[@]}" --arrow "$arrow" \
                    --seeds "$seed"
            done
        done ;;
    *) echo "unknown plan $PLAN (variants, width, ablation, family, arrow)" >&2; exit 2 ;;
esac
wait
tail -n 1 "$OUT"/*.log
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")" && rm -rf "$OUT" && echo "packed $OUT.tar.gz"
