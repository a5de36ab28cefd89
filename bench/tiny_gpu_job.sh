#!/usr/bin/env bash
# Search-quality (docs/targets.md) GPU job: continue training the tiny model, measure caption following, rerun the search-quality study
# over several seeds on the NEW weights. Every stage writes its outputs under $OUT as soon as it finishes, so a
# timeout keeps the earlier stages.
#
#   OUT=/path/to/out bash bench/tiny_gpu_job.sh          # H100: ~330 s training + ~1 min eval + ~2-3 min study
#
# Knobs (environment variables):
#   TRAIN_BUDGET   seconds from the start of train_tiny.py until training stops (default 330)
#   TRAIN_ARGS     extra train_tiny.py arguments (default: --lr 2e-4; --init-from sets a 50-step warm-up)
#   TRAIN_STEPS    fixed step count instead of the time budget (CPU smoke test)
#   TRAIN_BATCH    batch size (default 64)
#   EVAL_PROMPTS   caption-following prompts (default 24; the shipped numbers used 24)
#   SEEDS          quality-study seeds (default "0 1 2 3 4"), each with its own prompt split (--vary-prompts)
#   QUALITY_ARGS   extra bench/quality.py arguments (default --no-variants)
#   QUALITY_BUDGET seconds after which bench/quality.py starts no further config (default 120; the config running then still finishes)
#   DEVICE         cuda (default when available) or cpu
#   QUICK=1        CPU smoke mode: tiny step count, 4 eval prompts, quality --quick
set -uo pipefail

OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=${DEVICE:-$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
QUICK=${QUICK:-0}
TRAIN_BUDGET=${TRAIN_BUDGET:-330}
TRAIN_ARGS=${TRAIN_ARGS:---lr 2e-4}
TRAIN_BATCH=${TRAIN_BATCH:-64}
EVAL_PROMPTS=${EVAL_PROMPTS:-24}
SEEDS=${SEEDS:-0 1 2 3 4}
QUALITY_ARGS=${QUALITY_ARGS:---no-variants}
QUALITY_BUDGET=${QUALITY_BUDGET:-120}
WEIGHTS="$OUT/tiny_weights"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

stamp "device $DEVICE; torch $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "")')"

# ---- 1. continue training from the shipped weights -> $OUT/tiny_weights (+ tars, samples, train_log.json)
train_extra=()
if [ -n "${TRAIN_STEPS:-}" ]; then train_extra+=(--steps "$TRAIN_STEPS"); fi
if [ "$QUICK" = 1 ]; then train_extra+=(--sample-steps 2); else train_extra+=(--sample-steps 8); fi
stamp "stage 1: train (budget ${TRAIN_BUDGET} s, args: $TRAIN_ARGS)"
# shellcheck disable=SC2086
$PY bench/train_tiny.py --init-from sta_search/tiny/weights --out "$OUT/train" --folder "$WEIGHTS" \
    --time-budget "$TRAIN_BUDGET" --batch "$TRAIN_BATCH" $TRAIN_ARGS "${train_extra[@]}" 2>&1 | tee "$OUT/train.log"
train_rc=${PIPESTATUS[0]}
stamp "stage 1 exit $train_rc"
if [ ! -f "$WEIGHTS/model_index.json" ]; then
    stamp "no trained weights folder: stopping"; exit 1
fi

# ---- 2. caption following on the new weights and the shipped ones (same prompts, noise and batching as the
#         README numbers: 24 prompts, seed 0, batch 4)
eval_prompts=$EVAL_PROMPTS
if [ "$QUICK" = 1 ]; then eval_prompts=4; fi
stamp "stage 2: caption following ($eval_prompts prompts)"
$PY -m sta_search.tiny.evaluate --folder "$WEIGHTS" --device "$DEVICE" --prompts "$eval_prompts" \
    --out "$OUT/caption_following_new.json" > "$OUT/eval_new.log" 2>&1 || stamp "evaluate (new) failed: see eval_new.log"
$PY -m sta_search.tiny.evaluate --device "$DEVICE" --prompts "$eval_prompts" \
    --out "$OUT/caption_following_shipped.json" > "$OUT/eval_shipped.log" 2>&1 || stamp "evaluate (shipped) failed"
stamp "stage 2 done"

# ---- 3. multi-seed search-quality study on the new weights
quality_extra=()
if [ "$QUICK" = 1 ]; then quality_extra+=(--quick); fi
stamp "stage 3: quality study, seeds $SEEDS"
# shellcheck disable=SC2086
$PY bench/quality.py --model "$WEIGHTS" --device "$DEVICE" --seeds $SEEDS --vary-prompts \
    --work "$OUT/quality_work" --out "$OUT/quality_multiseed.json" --time-budget "$QUALITY_BUDGET" \
    $QUALITY_ARGS "${quality_extra[@]}" > "$OUT/quality.log" 2>&1 || stamp "quality study failed: see quality.log"
if [ ! -f "$OUT/quality_multiseed.json" ]; then  # e.g. the Triton profile path refused fp32: the torch reference path
    stamp "retrying the quality study with --profile-backend reference"
    # shellcheck disable=SC2086
    $PY bench/quality.py --model "$WEIGHTS" --device "$DEVICE" --seeds $SEEDS --vary-prompts --profile-backend reference \
        --work "$OUT/quality_work_ref" --out "$OUT/quality_multiseed.json" --time-budget "$QUALITY_BUDGET" \
        $QUALITY_ARGS "${quality_extra[@]}" > "$OUT/quality_ref.log" 2>&1 || stamp "quality study (reference) failed"
    grep -E "^\[seed|^after seed|Error" "$OUT/quality_ref.log" | tail -n 20
    rm -rf "$OUT/quality_work_ref"
fi
grep -E "^\[seed|^after seed|^time budget|^profile:|Error|error" "$OUT/quality.log" | tail -n 40
rm -rf "$OUT/quality_work"  # profiles (large, rebuildable)
stamp "stage 3 done"

# ---- summary
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.is_file() else None
log = load("train/train_log.json")
if log:
    print(f"train: {log.get('steps')} steps in {log.get('train_seconds')} s on {log.get('device')}; "
          f"loss {[e['loss'] for e in log['loss']][:1]} -> {[e['loss'] for e in log['loss']][-1:]}")
for tag in ("shipped", "new"):
    r = load(f"caption_following_{tag}.json")
    if r:
        print(f"caption following ({tag}): color {r['color']:.2f} floor {r['floor']:.2f} motion {r['motion']:.2f} "
              f"all {r['all']:.2f}  {r['motion_by_kind']}")
q = load("quality_multiseed.json")
if q:
    agg = q.get("aggregate", {})
    print(f"quality: seeds with results {agg.get('seeds')}; seeds skipped for time {q.get('seeds_skipped_for_time', [])}; "
          f"configs skipped for time {{seed: n}} "
          f"{ {k: len(v['skipped_for_time']) for k, v in q.get('per_seed', {}).items() if v.get('skipped_for_time')} }")
    for k, v in agg.get("differences", {}).items():
        s, p = v["psnr_db"], v["pooled_prompt_psnr_db"]
        std = f"{s['std']:.2f}" if s["std"] is not None else "-"
        print(f"  {k}: {s['mean']:+.2f} +- {std} dB over {s['n']} seeds; pooled prompts {p['mean']:+.2f} "
              f"(sem {p['sem'] if p['sem'] is None else round(p['sem'], 2)}), a beats b {v['prompts_where_a_beats_b']}")
EOF
stamp "all done"
