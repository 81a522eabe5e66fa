#!/usr/bin/env bash
# One prepared GPU job for the prior (minutes on a GPU are hours on the CPU): encode the CIFAR-10 training images
# with the shipped VQ-VAE, train a class-conditional PixelCNN with a null class for a wall-time budget, measure its
# samples, and return the prior, its metrics and the sample-quality figures under $OUT.
#
# Same set-up as scripts/device-train.sh (vqgen runs from the source tree; the data is copied along as the
# git-ignored .data folder), then on the GPU machine, within a 10-minute limit:
#   OUT=<folder to bring back> bash scripts/device-prior.sh
# The prior is fresh (SIZE may be larger than the shipped one's), trained on the 8x grids of
# `encode --flip --shift 2 --shift-copies 3`; --steps is sized by a short probe so the cosine schedule ends inside
# TRAIN_SECONDS. The sample figures use bench/sample_quality.py: `--reference train` over guidance weights (for
# choosing), then the held-out reference at GUIDANCE (for reporting). CPU smoke test (minutes):
#   DEVICE=cpu TRAIN_SECONDS=20 PROBE_STEPS=5 SIZE="-o channels=16 -o layers=7" SQ_GUIDANCES="0 5" OUT=/tmp/out \
#     bash scripts/device-prior.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives the weights}
DEVICE=${DEVICE:-cuda}
TRAIN_SECONDS=${TRAIN_SECONDS:-300}  # the main run's budget; encoding, the probe and the measurements need the rest
HARD_STOP=${HARD_STOP:-$((TRAIN_SECONDS + 60))}  # SIGTERM after this many seconds: vqgen checkpoints and stops
PROBE_STEPS=${PROBE_STEPS:-100}
STEPS=${STEPS:-}  # set to skip the probe and train exactly this many steps
BATCH=${BATCH:-256}
LR=${LR:-2e-3}
SIZE=${SIZE:-"-o channels=192 -o layers=15"}  # wider and deeper than the shipped 96 x 10
EVALS=${EVALS:-5}
SQ_GUIDANCES=${SQ_GUIDANCES:-"0 3 5 8"}
GUIDANCE=${GUIDANCE:-5}
ARCHIVE=${ARCHIVE:-.data/cifar10-train-jpeg.tar.gz}
WORK=${WORK:-/tmp/vqgen-device}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

mkdir -p "$WORK" "$OUT"
[ -d "$WORK/train" ] || tar -xzf "$ARCHIVE" -C "$WORK"
VQ=vqgen/weights/vqvae.safetensors
[ -f "$WORK/codes-train.safetensors" ] || python3 -m vqgen encode --device "$DEVICE" --vqvae "$VQ" --data "$WORK/train" \
  --split train --flip --shift 2 --shift-copies 3 --out "$WORK/codes-train.safetensors" --json > /dev/null
[ -f "$WORK/codes-val.safetensors" ] || python3 -m vqgen encode --device "$DEVICE" --vqvae "$VQ" --data "$WORK/train" \
  --split val --out "$WORK/codes-val.safetensors" --json > /dev/null
train() {  # train OUT_DIR STEPS EVAL_EVERY [PREFIX...]: one prior run with this job's settings, under PREFIX
  local out=$1 steps=$2 every=$3
  shift 3
  # shellcheck disable=SC2086  # SIZE is a word list on purpose
  "$@" python3 -m vqgen train-prior --device "$DEVICE" --codes "$WORK/codes-train.safetensors" \
    --val-codes "$WORK/codes-val.safetensors" --class-conditional --label-dropout 0.1 -o dropout=0.2 $SIZE \
    --batch-size "$BATCH" --lr "$LR" --seed 0 --steps "$steps" --eval-every "$every" --out "$out" --json
}

rm -rf "$WORK/probe" "$WORK/prior"
steps=$STEPS
if [ -z "$steps" ]; then
  rate=$(train "$WORK/probe" "$PROBE_STEPS" "$PROBE_STEPS" | python3 -c 'import json, sys; print(json.load(sys.stdin)["images_per_s"])')
  steps=$(python3 -c "print(max(1, int($rate * $TRAIN_SECONDS * 0.9 / $BATCH)))")
  echo "probe: $rate grids/s on $DEVICE -> $steps steps of $BATCH for ~${TRAIN_SECONDS}s" >&2
fi
set +e
train "$WORK/prior" "$steps" $(( (steps + EVALS - 1) / EVALS )) timeout -s TERM "$HARD_STOP" > "$OUT/summary.json"
status=$?
set -e
for f in metrics.jsonl prior.safetensors best.safetensors; do [ -f "$WORK/prior/$f" ] && cp "$WORK/prior/$f" "$OUT/"; done
if [ -f "$OUT/best.safetensors" ]; then
  # shellcheck disable=SC2086  # SQ_GUIDANCES is a word list on purpose
  python3 bench/sample_quality.py sweep "$WORK/train" --reference train --vqvae "$VQ" --prior "$OUT/best.safetensors" \
    --guidances $SQ_GUIDANCES --temperatures 1.0 --json "$OUT/sample-quality.jsonl" > /dev/null || status=1
  python3 bench/sample_quality.py measure "$WORK/train" --vqvae "$VQ" --prior "$OUT/best.safetensors" \
    --guidance "$GUIDANCE" --json "$OUT/sample-quality.jsonl" > /dev/null || status=1
fi
echo "exit $status; in $OUT: $(ls "$OUT" | tr '\n' ' ')" >&2
exit "$status"
