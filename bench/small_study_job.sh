#!/usr/bin/env bash
# Issue #15 GPU job: the search-quality study v2 and the locality report on the bundled `small` model, in
# one go, writing flat into OUTDIR (5 files: quality_small.json, quality_small.png, locality_small.json,
# locality_small.png, job.log; each well under 15 MB).
#
#   bash bench/small_study_job.sh OUTDIR            # H200: ~75 s a seed (run 22, 2026-12-04), ~7 min; at most ~8.5 min
#   bash bench/small_study_job.sh OUTDIR --quick    # CPU smoke: 8x64x96 px, 3 steps, 2 seeds, 2+2 prompts
#
# Stage 1 (bench/quality.py, plan v2): 5 seeds (each its own training/held-out caption split), 4 training
# captions profiled per seed, 16 held-out captions, densities 0.1 0.2 0.3 0.42; it starts no further config
# after QUALITY_BUDGET seconds and writes its JSON after every config, so a stop keeps what finished.
# Stage 2 (bench/locality.py): the locality report from stage 1's seed-0 profile (no extra GPU work); if
# that profile is missing it profiles LOCALITY_PROMPTS captions itself within LOCALITY_BUDGET seconds.
# Every stage runs under `timeout` as a last resort (HARD_* seconds), so the job ends even if one hangs.
#
# Knobs (environment): QUALITY_BUDGET (default 420), HARD_QUALITY (470), LOCALITY_BUDGET (30),
# HARD_LOCALITY (40), SEEDS ("0 1 2 3 4"), DEVICE (cuda when available), PYTHON (python3), OBJECTIVES (extra
# solver objectives at argmin-capped's density, e.g. "squared-error"; default none), SOLVER_VARIANTS (extra solver
# variants there: "budget-per-step", "layer", "step-calibrated" (step weights measured per seed; it also runs at
# 0.2 and 0.3 themselves); default "step-calibrated", "" for none).
set -uo pipefail

OUT=${1:?usage: bench/small_study_job.sh OUTDIR [--quick]}
QUICK=0
if [ "${2:-}" = "--quick" ]; then QUICK=1; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
SEEDS=${SEEDS:-0 1 2 3 4}
if [ "$QUICK" = 1 ]; then big=100000; else big=""; fi  # the CPU smoke has no time limits unless given
QUALITY_BUDGET=${QUALITY_BUDGET:-${big:-420}}  # 5 seeds x ~75 s on the H200 (session 27: 165 s fitted two)
HARD_QUALITY=${HARD_QUALITY:-${big:-470}}
LOCALITY_BUDGET=${LOCALITY_BUDGET:-${big:-30}}
HARD_LOCALITY=${HARD_LOCALITY:-${big:-40}}
WORK=$(mktemp -d /tmp/sta-small-study.XXXXXX)
LOG="$OUT/job.log"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
: > "$LOG"

quality_args=(--model small --device "$DEVICE" --plan v2 --vary-prompts --train-prompts 4 --heldout-prompts 16
              --densities 0.1 0.2 0.3 0.42 --profile-every 2)
locality_args=(--model small --device "$DEVICE" --prompts 4)
if [ "$QUICK" = 1 ]; then
    SEEDS=${SEEDS_QUICK:-0 1}
    size=(--height 64 --width 96 --frames 8 --steps 3)
    quality_args=(--model small --device "$DEVICE" --plan v2 --vary-prompts --train-prompts 2 --heldout-prompts 2
                  --densities 0.2 0.3 0.42 --profile-every 2 "${size[@]}")
    locality_args=(--model small --device "$DEVICE" --prompts 2 "${size[@]}")
fi

if [ -n "${OBJECTIVES:-}" ]; then
    # shellcheck disable=SC2206
    quality_args+=(--objectives $OBJECTIVES)
fi
SOLVER_VARIANTS=${SOLVER_VARIANTS-step-calibrated}  # the solver with measured step weights; "" for none
if [ -n "${SOLVER_VARIANTS:-}" ]; then
    # shellcheck disable=SC2206
    quality_args+=(--solver-variants $SOLVER_VARIANTS)
fi

stamp "device $DEVICE; $($PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "")' 2>&1 | tail -n 1)"

# ---- 1. search-quality study v2
stamp "stage 1: quality study v2, seeds $SEEDS (budget ${QUALITY_BUDGET} s, hard limit ${HARD_QUALITY} s)"
# shellcheck disable=SC2086
timeout -k 10 "$HARD_QUALITY" $PY bench/quality.py "${quality_args[@]}" --seeds $SEEDS \
    --work "$WORK/quality" --out "$OUT/quality_small.json" --time-budget "$QUALITY_BUDGET" >> "$LOG" 2>&1
stamp "stage 1 exit $?"

# ---- 2. locality report (from the seed-0 profile of stage 1 when it exists)
profile="$WORK/quality/profile"
if [ -f "$profile/header.json" ] && [ -f "$profile/stats.safetensors" ]; then
    stamp "stage 2: locality report from $profile"
    timeout -k 10 "$HARD_LOCALITY" $PY bench/locality.py --profile "$profile" --out "$OUT" --name locality_small >> "$LOG" 2>&1
else
    stamp "stage 2: no stage-1 profile; locality report profiles its own (budget ${LOCALITY_BUDGET} s)"
    timeout -k 10 "$HARD_LOCALITY" $PY bench/locality.py "${locality_args[@]}" --work "$WORK/locality" \
        --out "$OUT" --name locality_small --time-budget "$LOCALITY_BUDGET" >> "$LOG" 2>&1
fi
stamp "stage 2 exit $?"

# ---- summary (into the log)
$PY - "$OUT" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
q = out / "quality_small.json"
if q.is_file():
    r = json.loads(q.read_text())
    agg = r.get("aggregate", {})
    print(f"quality: seeds with results {agg.get('seeds')}; seeds skipped {r.get('seeds_skipped_for_time', [])}; "
          f"configs skipped {{seed: n}} "
          f"{ {k: len(v.get('skipped_for_time', [])) for k, v in r.get('per_seed', {}).items() if v.get('skipped_for_time')} }; "
          f"total {r.get('timings', {}).get('total_s')} s")
    for k, v in r.get("targets", {}).items():
        print(f"  target {k}: {v}")
    for name, c in agg.get("configs", {}).items():
        t = c.get("tpsnr_db", {}).get("mean")
        print(f"  {name:42s} density {c['density']['mean']:.3f} PSNR {c['psnr_db']['mean']:.2f} "
              f"(+- {c['psnr_db']['std'] or 0:.2f}, n={c['psnr_db']['n']}) SSIM {c['ssim']['mean']:.4f} "
              f"tPSNR {t if t is None else round(t, 2)}")
loc = out / "locality_small.json"
if loc.is_file():
    r = json.loads(loc.read_text())
    s = r["summary"]
    print(f"locality: {s['heads_keeping_80pct_at_density_le_0.2']}/{s['heads']} heads keep >= 80% at density <= 0.2; "
          f"median mass kept at <= 0.1/0.2/0.3: {s['median_head_mass_kept_at_density_le']}")
    print(f"  paper-matched window: {r['paper_comparison']['matched_window_here']} -> "
          f"{r['paper_comparison']['here_mass_kept_in_matched_window']}")
for p in sorted(out.iterdir()):
    print(f"  {p.name}: {p.stat().st_size / 1e6:.2f} MB")
EOF
rm -rf "$WORK"
stamp "all done"
