#!/usr/bin/env bash
# The direction ladder (session 21): `small` from scratch on data that steps from the direction toy's setting to
# small's own, to find the rung at which the captioned motion direction stops being learnt. One device call:
#
#   bash bench/direction_ladder_job.sh OUTDIR [SECONDS] [RUNG...]   # default 480 s, all four rungs at once
#
# The runs share the GPU, so fewer rungs get more steps each (the toy needed ~1,900 steps). A rung continues from
# ckpt/RUNG/ (or $RESUME/RUNG/) when that folder exists (its checkpoint-NN.tar, as returned below; the checkpoint
# keeps --max-objects, --plain-scenes and --freeze-text-encoder). To carry returned tars to the next call:
#   mkdir -p R/RUNG && for f in OUT-RUNG-checkpoint-*.tar; do cp "$f" R/RUNG/"${f##*-RUNG-}"; done
#   bash bench/checkpoint_carry.sh prep R        # then the call with carry [".whl", "ckpt"]; restore afterwards
#
# Why: the direction toy (bench/direction_toy.py, one object on black, a one-word caption as a learned token) reads
# the direction by ~1,900 steps once its data has an arrow of time; `small` from scratch on accel data does not
# (run 20: opposite-direction loss gap ~0 after 3,357 steps), nor with one object per scene (run 21, 1,268 steps).
# Every run: bench/train_small.py from scratch, --ease accel, the small canvas only (8x64x96 px, batch 64), scored on
# the standard held-out captions (16, guidance 4) and on held-out captions of its own kind of scene (train_log.json
# eval_own_distribution: the toy's score, for the one-object rungs), and diagnosed on held-out scenes of its own
# distribution (direction_diagnostics). Rungs:
#   one-plain     one object, untextured floor, still camera, steady light (closest to the toy)
#   one           one object, textures, camera moves and light changes
#   many-plain    2-3 objects, untextured floor, still camera, steady light
#   many          small's own data (2-3 objects, textures, camera, light)
# and any rung with "-frozen" (e.g. one-plain-frozen, many-frozen): the text encoder stays at its random
# initialisation (--freeze-text-encoder), as a real Wan's umT5 stays frozen. Why: the jointly trained encoder merges
# the direction words (output at the word 23-27% apart at initialisation, 5-7% after run 20's 3,357 steps, while
# colours go to 63%), perhaps before the denoiser has learnt to read them. Session 22 (bench/results/small_train/ladder22/):
# one-plain-frozen reads the size words and the motion axis by ~2,600 steps, one-plain does not; neither the sign.
# Session 23 added "-pretrained" (e.g. many-pretrained): the text encoder is pretrained on captions alone
# (bench/pretrain_text_encoder.py: every token predicts its object's attributes) and then frozen, as umT5 is pretrained.
# A fresh such rung takes the encoder from $RESUME/text_encoder-pretrained/ (committed beside the ladder's checkpoints,
# so `checkpoint_carry.sh prep` carries it) or else pretrains one here first (~1-3 minutes on the CPU).
# Session 24 (bench/results/small_train/ladder24/): with it, many-pretrained reads the axis and size words by ~1,750
# steps (gaps 2-5%; many-frozen: ~0.01% at 1,681) and one-plain-pretrained reads them about as well at 2,496 steps as
# one-plain-frozen at 5,140.
# LADDER_EXTRA (environment) adds train_small.py arguments to every rung, after the ladder's own (argparse keeps the
# last): session 26 continued many-pretrained on the bundled recipe's two canvases as small run 22, to 6,965 steps
# (LADDER_EXTRA="--canvases 16x96x160:12,8x64x96:64 --large-fraction 0.3 --reserve 110", --decay on the last call).
# Logs, train_log.json and samples are packed into OUTDIR.tar.gz. With one or two rungs each run's EMA checkpoint comes
# back too, as OUTDIR-RUNG-checkpoint-NN.tar (train_small.py --pack; a device call returns at most 8 files).
set -uo pipefail
OUT=${1:?usage: bench/direction_ladder_job.sh OUTDIR [SECONDS] [RUNG...]}
SECS=${2:-480}
RESUME=$(realpath -m "${RESUME:-ckpt}")
RUNGS=("${@:3}")
[ ${#RUNGS[@]} -eq 0 ] && RUNGS=(one-plain one many-plain many)
base() { local r=${1%-frozen}; echo "${r%-pretrained}"; }
for rung in "${RUNGS[@]}"; do
    case $(base "$rung") in
        one-plain|one|many-plain|many) ;;
        *) echo "unknown rung $rung (one-plain, one, many-plain, many, each optionally with -frozen or -pretrained)" >&2
           exit 2 ;;
    esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/gpu.txt" 2>&1
# --ema 0.99: a call keeps only the EMA weights (--no-raw-state, so that two rungs fit one carry) and the next call
# restarts from them, so the EMA's horizon is lost at every call. train_small's EMA ramps as (1+s)/(10+s) towards
# --ema; under the default 0.999 that horizon is ~s/9 steps (~570 at step 5,140: half of an 850-step call), while
# 0.99 caps it at 100 (session 23; each call's train_log.json has the gaps of the raw weights beside the EMA's).
common=(--ease accel --canvases 8x64x96:64 --no-raw-state --ema 0.99 --time-budget "$SECS" --reserve 60
        --eval-prompts 16 --eval-guidance 4 --sample-prompts 4 --pack)
read -ra extra <<< "${LADDER_EXTRA:-}"  # e.g. LADDER_EXTRA=--decay for a last call that anneals the lr
common+=("${extra[@]}")
launch() {  # NAME ARGS...: one run in the background, its output under OUT/NAME and its log beside it
    local name=$1; shift
    local resume=()
    [ -d "$RESUME/$name" ] && resume=(--resume "$RESUME/$name")
    python3 bench/train_small.py "${common[@]}" "$@" "${resume[@]}" --out "$OUT/$name" > "$OUT/$name.log" 2>&1 &
}
for rung in "${RUNGS[@]}"; do
    frozen=(); [ "$rung" != "${rung%-frozen}" ] && frozen=(--freeze-text-encoder)
    if [ "$rung" != "${rung%-pretrained}" ]; then
        frozen=(--freeze-text-encoder)
        if [ ! -d "$RESUME/$rung" ]; then  # fresh: start from a pretrained encoder (a resume keeps its own)
            encoder=$RESUME/text_encoder-pretrained
            if [ ! -f "$encoder/config.json" ]; then
                python3 bench/pretrain_text_encoder.py --out "$OUT/$rung-text" > "$OUT/$rung-text.log" 2>&1 || exit 1
                encoder=$OUT/$rung-text/text_encoder
            fi
            frozen+=(--text-encoder "$encoder")
        fi
    fi
    case $(base "$rung") in
        one-plain) launch "$rung" --max-objects 1 --plain-scenes "${frozen[@]}" ;;
        one) launch "$rung" --max-objects 1 "${frozen[@]}" ;;
        many-plain) launch "$rung" --plain-scenes "${frozen[@]}" ;;
        many) launch "$rung" "${frozen[@]}" ;;
    esac
done
wait
grep -h "^direction diagnostics\|^eval" "$OUT"/*.log
for run in "$OUT"/*/; do
    for tar in "$run"checkpoint-*.tar; do
        [ -e "$tar" ] || continue
        if [ ${#RUNGS[@]} -le 2 ]; then mv "$tar" "$OUT-$(basename "$run")-$(basename "$tar")"; else rm "$tar"; fi
    done
done
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")" && rm -rf "$OUT" && echo "packed $OUT.tar.gz"
