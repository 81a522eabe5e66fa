#!/usr/bin/env bash
# Rebuild the shipped CIFAR-10 weights (vqgen/weights/) from the CIFAR-10 training images.
# Resumable: run it again after an interruption, or with larger *_LEGS to train further
# (each stage continues from RUN_ROOT/<stage>/checkpoint.safetensors with --resume).
#
# Each stage is trained in legs: a leg runs (or resumes) the run up to its step count. A leg the run has
# already passed only re-evaluates. The cosine schedule spans each leg's total, so the legs below are
# exactly how the shipped weights were trained (docs/model-card.md); append a leg to train further.
# The shipped pair is the one whose samples measured best (BENCHMARKS.md, "Sample quality"): the paper's
# K=512 codes, the default network grown wider and deeper, and a prior fine-tuned with a null class for
# classifier-free guidance, plus a small, briefly trained prior that `vqgen sample` autoguides it away from.
#
#   bash scripts/train-default.sh
#   FINETUNE_LEGS="3000 6000 9000 12000 15000" bash scripts/train-default.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_ROOT=${RUN_ROOT:-runs/default}
DATA=${DATA:-$HOME/.cache/vqgen-data/train}
ARCHIVE=${ARCHIVE:-../shared/data/cifar10-train-jpeg.tar.gz}
VQ_LEGS=${VQ_LEGS:-"13000 22000"}
VQ_ARGS=${VQ_ARGS:-""}  # VQ-VAE options for a new run (the shipped one: the CLI's default network, K=512)
GROWN_LEGS=${GROWN_LEGS:-"16000"}
GROWN_ARGS=${GROWN_ARGS:-"--hidden 192 --res-blocks 4 --res-channels 64"}
PRIOR_LEGS=${PRIOR_LEGS:-"5000 8000"}
PRIOR_ARGS=${PRIOR_ARGS:-""}  # prior options for a new run, e.g. "-o channels=128" (the shipped prior: the default)
FINETUNE_LEGS=${FINETUNE_LEGS:-"3000 6000 9000 12000"}
WEAK_LEGS=${WEAK_LEGS:-"2500"}
WEAK_ARGS=${WEAK_ARGS:-"-o channels=64 -o layers=8"}  # the weak prior's size: a third of the default's parameters
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

# stage 1: the default VQ-VAE (leg 1 = the default 13,000 steps)
for steps in $VQ_LEGS; do
  stage vq "$VQ_ARGS" vqgen train-vqvae --data "$DATA" --seed "$SEED" --steps "$steps" --json
done
# stage 1, grown: wider and deeper, starting from the default VQ-VAE (half the default peak LR: it is fine-tuning)
for steps in $GROWN_LEGS; do
  stage vq-grown "--init-from $RUN_ROOT/vq/vqvae.safetensors $GROWN_ARGS" \
    vqgen train-vqvae --data "$DATA" --seed "$SEED" --lr 1e-3 --warmup 200 --steps "$steps" --json
done
VQ=$RUN_ROOT/vq-grown/vqvae.safetensors

# codes of the 98% training split, of its mirror images (--flip) and of both shifted by 1-2 pixels (--shift 2):
# four times the grids, because the prior is short of data; then three shifted copies instead of one
# (--shift-copies 3, each by a different offset: eight times the grids) for the fine-tuning stage;
# the 2% held-out split, seed 0, is never trained on by either stage
vqgen encode --vqvae "$VQ" --data "$DATA" --split train --flip --shift 2 --out "$RUN_ROOT/codes-train-x4.safetensors"
vqgen encode --vqvae "$VQ" --data "$DATA" --split train --flip --shift 2 --shift-copies 3 --out "$RUN_ROOT/codes-train.safetensors"
vqgen encode --vqvae "$VQ" --data "$DATA" --split val --out "$RUN_ROOT/codes-val.safetensors"

# stage 2: the default class-conditional gated PixelCNN, trained before vqgen had a null class (--label-dropout 0)
for steps in $PRIOR_LEGS; do
  stage prior "$PRIOR_ARGS" vqgen train-prior --codes "$RUN_ROOT/codes-train-x4.safetensors" \
    --val-codes "$RUN_ROOT/codes-val.safetensors" --class-conditional --label-dropout 0 -o dropout=0.2 \
    --seed "$SEED" --steps "$steps" --json
done
# stage 2, fine-tuned: from that prior, on the 8x grids, with the null class (one label in ten dropped) that
# `vqgen sample --guidance` needs; half the default peak LR
for steps in $FINETUNE_LEGS; do
  stage prior-cfg "--init-from $RUN_ROOT/prior/prior.safetensors" vqgen train-prior \
    --codes "$RUN_ROOT/codes-train.safetensors" --val-codes "$RUN_ROOT/codes-val.safetensors" --class-conditional \
    --label-dropout 0.1 -o dropout=0.2 --lr 1e-3 --seed "$SEED" --steps "$steps" --json
done

# stage 2, weak: a smaller PixelCNN trained briefly from scratch on the same grids, with a null class; `vqgen sample`
# autoguides the shipped prior away from it (vqgen.sampling.DEFAULT_AUTOGUIDANCE, chosen by measured samples)
for steps in $WEAK_LEGS; do
  stage prior-weak "$WEAK_ARGS" vqgen train-prior --codes "$RUN_ROOT/codes-train.safetensors" \
    --val-codes "$RUN_ROOT/codes-val.safetensors" --class-conditional --label-dropout 0.1 -o dropout=0.2 \
    --seed "$SEED" --steps "$steps" --eval-every 500 --json
done

cp "$VQ" vqgen/weights/vqvae.safetensors
cp "$RUN_ROOT/prior-cfg/prior.safetensors" vqgen/weights/prior.safetensors
cp "$RUN_ROOT/prior-weak/prior.safetensors" vqgen/weights/prior-weak.safetensors
# the files just copied (named: an installed, non-editable vqgen would otherwise evaluate its own copies)
vqgen evaluate --vqvae vqgen/weights/vqvae.safetensors --prior vqgen/weights/prior.safetensors \
  --data "$DATA" --split val --json "$RUN_ROOT/evaluate-val.json"
