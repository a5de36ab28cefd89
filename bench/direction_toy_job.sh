#!/usr/bin/env bash
# The direction toy (bench/direction_toy.py) on one GPU, for many more steps than the CPU allows, in one device call:
#
#   bash bench/direction_toy_job.sh OUTDIR [SECONDS]      # default 420 s of training per run
#
# Five runs at once, one process each (the model is tiny; the GPU time-slices them): the caption names the motion
# direction for the variants rope, coords, adaln and coords+adaln, and the square's colour for rope (the control).
# Batch 64, caption dropout 0.1, sampled with guidance 3. Everything under OUTDIR is packed into OUTDIR.tar.gz.
set -uo pipefail
OUT=${1:?usage: bench/direction_toy_job.sh OUTDIR [SECONDS]}
SECS=${2:-420}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/gpu.txt" 2>&1
common=(--device cuda --seconds "$SECS" --seeds 0 --batch 64 --caption-dropout 0.1 --guidance 3)
for variant in rope coords adaln coords+adaln; do
    python3 bench/direction_toy.py "${common[@]}" --variants "$variant" --out "$OUT/direction-$variant" \
        > "$OUT/direction-$variant.log" 2>&1 &
done
python3 bench/direction_toy.py "${common[@]}" --task colour --variants rope --out "$OUT/colour-rope" \
    > "$OUT/colour-rope.log" 2>&1 &
wait
tail -n 1 "$OUT"/*.log
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")" && rm -rf "$OUT" && echo "packed $OUT.tar.gz"
