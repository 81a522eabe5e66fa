#!/usr/bin/env bash
# Held-out PSNR and codebook usage after a default `vqgen train-vqvae` run (13,000 steps: ~30 min on the
# 2-core AVX-512 CPU of 2026-11-28, ~43 min on the AMX one of 2026-12-02) for each quantizer variant, on the
# CIFAR-10 training images in ../shared/data. STEPS sizes the run to another machine's 30 minutes.
#   bash bench/quality_30min.sh [OUT_ROOT]
#   STEPS=8500 QUANTIZERS=ema bash bench/quality_30min.sh     # the 2026-12-02 figure (BENCHMARKS.md)
# The held-out split (2%, seed 0) is never trained on; figures come from the final evaluation.
set -euo pipefail
out=${1:-runs/bench}
data=${VQGEN_BENCH_DATA:-$HOME/.cache/vqgen-data/train}
if [ ! -d "$data" ]; then
  mkdir -p "$(dirname "$data")"
  tar -xzf "$(dirname "$0")/../../shared/data/cifar10-train-jpeg.tar.gz" -C "$(dirname "$data")"
fi
for q in ${QUANTIZERS:-ema vq}; do
  # shellcheck disable=SC2046  # no --steps at all unless STEPS is set
  /usr/bin/time -f "%e s wall" vqgen train-vqvae --data "$data" --out "$out/$q" --quantizer "$q" --json \
    $([ -n "${STEPS:-}" ] && echo --steps "$STEPS") \
    > "$out-$q.json"
  python3 -c "import json,sys; s=json.load(open('$out-$q.json')); print('$q', {k: s[k] for k in ('steps','val_psnr','codes_used','perplexity','images_per_s')})"
done
