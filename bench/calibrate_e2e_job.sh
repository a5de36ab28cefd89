#!/usr/bin/env bash
# The step-weight path end to end on the bundled `small`, as a user runs it (GPU; ~2 minutes on an H200):
#   profile --calibrate-steps -> select (uses step_sensitivity.json) and select --step-weights none -> generate
#   both configs on 4 held-out captions with --compare-dense. Everything under OUTDIR is packed into OUTDIR.tar.gz.
#
#   bash bench/calibrate_e2e_job.sh OUTDIR
set -uo pipefail
OUT=${1:?usage: bench/calibrate_e2e_job.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/job.log"; }
python3 - "$OUT" <<'PY'
import sys
sys.path.insert(0, "bench")
from quality import prompts
training, heldout = prompts(4, 4, split=0, kind="small")  # the study's seed-0 split: disjoint caption sets
open(sys.argv[1] + "/training.txt", "w").write("\n".join(training) + "\n")
open(sys.argv[1] + "/heldout.txt", "w").write("\n".join(heldout) + "\n")
PY
stamp "profile small (4 training captions, every 2nd step) with --calibrate-steps"
python3 -m sta_search profile small --prompts "$OUT/training.txt" --profile-steps 2 --out "$OUT/profile" --calibrate-steps >> "$OUT/job.log" 2>&1
stamp "exit $?"
python3 -m sta_search select "$OUT/profile" --budget 0.3 --out "$OUT/weighted.yaml" >> "$OUT/job.log" 2>&1
python3 -m sta_search select "$OUT/profile" --budget 0.3 --step-weights none --out "$OUT/plain.yaml" >> "$OUT/job.log" 2>&1
stamp "select exit $?"
for name in weighted plain; do
    python3 -m sta_search generate small --mask "$OUT/$name.yaml" --prompts "$OUT/heldout.txt" --compare-dense \
        --out "$OUT/gen-$name" >> "$OUT/job.log" 2>&1
    stamp "generate $name exit $?"
done
find "$OUT" -name '*.mp4' -delete
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")" && rm -rf "$OUT" && echo "packed $OUT.tar.gz"
