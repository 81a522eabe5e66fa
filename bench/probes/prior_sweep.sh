#!/usr/bin/env bash
# Held-out bits per code against wall time for candidate prior sizes (how the default prior sizes were picked).
# Each candidate trains for SECONDS of wall time on one thread (two run side by side on a 2-core machine), at the
# default batch size with a constant learning rate, evaluating on the held-out codes every 100 steps.
#   bash bench/probes/prior_sweep.sh TRAIN_CODES VAL_CODES [OUT_ROOT]
# Then: python3 bench/probes/summarize_sweep.py OUT_ROOT
set -euo pipefail
train=$1; val=$2; out=${3:-runs/prior-sweep}; secs=${SECONDS_PER_RUN:-360}
export OMP_NUM_THREADS=1 VQGEN_QUIET=1
run() {  # run TAG PRIOR [OPTIONS...]
  local tag=$1; shift
  timeout -s INT "$secs" vqgen train-prior --codes "$train" --val-codes "$val" --prior "$@" --out "$out/$tag" \
    --steps 1000000 --lr-schedule constant --eval-every 100 --checkpoint-every 100000 --device cpu \
    > "$out/$tag.out" 2> "$out/$tag.err" || true
}
mkdir -p "$out"
{ run pixelcnn-96x10 pixelcnn; run pixelcnn-128x12 pixelcnn -o channels=128 -o layers=12; } &
{ run transformer-6x128 transformer; run pixelcnn-64x15 pixelcnn -o channels=64 -o layers=15; } &
wait
