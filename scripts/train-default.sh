#!/usr/bin/env bash
# Rebuild the shipped CIFAR-10 weights (vqgen/weights/) from the CIFAR-10 training images.
# Resumable: run it again after an interruption, or with larger VQ_LEGS / PRIOR_LEGS to train further
# (each stage continues from RUN_ROOT/<stage>/checkpoint.safetensors with --resume).
#
# Each stage is trained in legs: a leg runs (or resumes) the run up to its step count. A leg the run has
# already passed only re-evaluates. The cosine schedule spans each leg's total, so the legs below are
# exactly how the shipped weights were trained (docs/model-card.md); append a leg to train further.
# The shipped VQ-VAE is the default network with a codebook of 4,096 codes (VQ_ARGS; the paper's 512 are the
# CLI's default): 12 bits per grid position instead of 9 buy ~1.4 dB held-out (BENCHMARKS.md, section 2).
#
#   bash scripts/train-default.sh
#   VQ_LEGS="13000 22000" bash scripts/train-default.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_ROOT=${RUN_ROOT:-runs/default}
DATA=${DATA:-$HOME/.cache/vqgen-data/train}
ARCHIVE=${ARCHIVE:-../shared/data/cifar10-train-jpeg.tar.gz}
VQ_LEGS=${VQ_LEGS:-"13000"}
VQ_ARGS=${VQ_ARGS:-"--codebook-size 4096"}
PRIOR_LEGS=${PRIOR_LEGS:-"3000"}
PRIOR_ARGS=${PRIOR_ARGS:-""}  # prior options for a new run, e.g. "-o channels=128" (the shipped prior: the default)
SEED=${SEED:-0}

if [ ! -d "$DATA" ]; then
  mkdir -p "$(dirname "$DATA")"
  tar -xzf "$ARCHIVE" -C "$(dirname "$DATA")"
fi

stage() {  # stage NAME "FRESH-ONLY ARGS" CMD...: start the run (with the fresh-only args), or resume it
  local name=$1 fresh=$2; shift 2
  if [ -f "$RUN_ROOT/$name/checkpoint.safetensors" ]; then
    "$@" --out "$RUN_ROOT/$name" --resume
  else
    # shellcheck disable=SC2086  # fresh-only args are a word list on purpose
    "$@" --out "$RUN_ROOT/$name" $fresh
  fi
}

# stage 1: the VQ-VAE (leg 1 = the default 13,000 steps)
for steps in $VQ_LEGS; do
  stage vq "$VQ_ARGS" vqgen train-vqvae --data "$DATA" --seed "$SEED" --steps "$steps" --json
done

# codes of the 98% training split, of its mirror images (--flip) and of both shifted three times, each by a
# different 1-2 pixel offset (--shift 2 --shift-copies 3): eight times the grids, because the prior is short of data;
# the 2% held-out split, seed 0, is never trained on by either stage
vqgen encode --vqvae "$RUN_ROOT/vq/vqvae.safetensors" --data "$DATA" --split train --flip --shift 2 --shift-copies 3 --out "$RUN_ROOT/codes-train.safetensors"
vqgen encode --vqvae "$RUN_ROOT/vq/vqvae.safetensors" --data "$DATA" --split val --out "$RUN_ROOT/codes-val.safetensors"

# stage 2: the default class-conditional gated PixelCNN
for steps in $PRIOR_LEGS; do
  stage prior "$PRIOR_ARGS" vqgen train-prior --codes "$RUN_ROOT/codes-train.safetensors" --val-codes "$RUN_ROOT/codes-val.safetensors" \
    --class-conditional -o dropout=0.2 --seed "$SEED" --steps "$steps" --json
done

cp "$RUN_ROOT/vq/vqvae.safetensors" vqgen/weights/vqvae.safetensors
cp "$RUN_ROOT/prior/prior.safetensors" vqgen/weights/prior.safetensors
# the files just copied (named: an installed, non-editable vqgen would otherwise evaluate its own copies)
vqgen evaluate --vqvae vqgen/weights/vqvae.safetensors --prior vqgen/weights/prior.safetensors \
  --data "$DATA" --split val --json "$RUN_ROOT/evaluate-val.json"
