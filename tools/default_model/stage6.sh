#!/usr/bin/env bash
# Stage 6: from stage4.pt, the data of stage 4 with stronger augmentation (zoom 0.8-1.25, band order, saturation, blur:
# geoseg.learn.chips.augment, in the code, not the script), lr 1.5e-4, 5 epochs; thresholds tuned on the real
# validation strips.
set -euo pipefail
INIT=${INIT:-stage4.pt} OUT=${OUT:-stage6.pt} EPOCHS=${EPOCHS:-5} LR=1.5e-4 SEED=6 SYNTH_SEED=7000 \
  exec bash "$(dirname "$0")/stage4.sh" "$@"
