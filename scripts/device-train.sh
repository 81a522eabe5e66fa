#!/usr/bin/env bash
# One prepared job for a GPU machine that is lent for a few minutes: train a VQ-VAE on the CIFAR-10 training
# images for a wall-time budget and return its weights and metrics under $OUT.
#
# The GPU machine is assumed to have torch, torchvision, typer, rich, pillow and safetensors but no
# network, so vqgen runs from the source tree (PYTHONPATH) and the data is copied there with the checkout as a
# git-ignored folder. Here, once:
#   mkdir -p .data && cp ../shared/data/cifar10-train-jpeg.tar.gz .data/ && echo /.data/ >> .git/info/exclude
# then, on the GPU machine, in the copied checkout (with .data), within a 10-minute limit:
#   OUT=<folder to bring back> bash scripts/device-train.sh
# It measures throughput with a short run, sizes --steps so the cosine schedule ends inside TRAIN_SECONDS, trains,
# and copies vqvae.safetensors (last), best.safetensors (best held-out PSNR), metrics.jsonl and summary.json to
# $OUT. If the run still overruns, `timeout` sends SIGTERM after HARD_STOP seconds: vqgen checkpoints and stops, and best.safetensors
# holds the best evaluation so far. Held-out split as everywhere (2%, seed 0), so figures compare with
# BENCHMARKS.md. CPU smoke test (minutes): DEVICE=cpu TRAIN_SECONDS=30 PROBE_STEPS=10 OUT=/tmp/out bash scripts/device-train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives the weights}
DEVICE=${DEVICE:-cuda}
TRAIN_SECONDS=${TRAIN_SECONDS:-360}  # the main run's budget; the probe, data loading and copies need the rest
HARD_STOP=${HARD_STOP:-$((TRAIN_SECONDS + 90))}  # SIGTERM after this many seconds, well inside a 10-minute limit
PROBE_STEPS=${PROBE_STEPS:-300}
STEPS=${STEPS:-}  # set to skip the probe and train exactly this many steps
BATCH=${BATCH:-256}
LR=${LR:-2e-3}
SIZE=${SIZE:-"--hidden 192 --res-blocks 4 --res-channels 64 --codebook-size 4096"}  # wider than shipped, same 4,096 codes
AUG=${AUG:-"--flip --shift 4"}
EVALS=${EVALS:-8}  # held-out evaluations in the main run
ARCHIVE=${ARCHIVE:-.data/cifar10-train-jpeg.tar.gz}
WORK=${WORK:-/tmp/vqgen-device}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

mkdir -p "$WORK" "$OUT"
[ -d "$WORK/train" ] || tar -xzf "$ARCHIVE" -C "$WORK"
train() {  # train OUT_DIR STEPS EVAL_EVERY [PREFIX...]: one vqgen run with this job's settings, under PREFIX
  local out=$1 steps=$2 every=$3
  shift 3
  # shellcheck disable=SC2086  # SIZE and AUG are word lists on purpose
  "$@" python3 -m vqgen train-vqvae --device "$DEVICE" --data "$WORK/train" $SIZE $AUG --batch-size "$BATCH" \
    --lr "$LR" --seed 0 --steps "$steps" --eval-every "$every" --out "$out" --json
}

rm -rf "$WORK/probe" "$WORK/vq"
steps=$STEPS
if [ -z "$steps" ]; then
  rate=$(train "$WORK/probe" "$PROBE_STEPS" "$PROBE_STEPS" | python3 -c 'import json, sys; print(json.load(sys.stdin)["images_per_s"])')
  steps=$(python3 -c "print(max(1, int($rate * $TRAIN_SECONDS * 0.9 / $BATCH)))")
  echo "probe: $rate images/s on $DEVICE -> $steps steps of $BATCH for ~${TRAIN_SECONDS}s" >&2
fi
set +e
train "$WORK/vq" "$steps" $(( (steps + EVALS - 1) / EVALS )) timeout -s TERM "$HARD_STOP" > "$OUT/summary.json"
status=$?
set -e
for f in metrics.jsonl vqvae.safetensors best.safetensors; do [ -f "$WORK/vq/$f" ] && cp "$WORK/vq/$f" "$OUT/"; done
echo "exit $status; in $OUT: $(ls "$OUT" | tr '\n' ' ')" >&2
exit "$status"
