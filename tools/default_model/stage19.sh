#!/usr/bin/env bash
# Stage 19 (session 41): from stage8.pt, the data of stage 8 (marina crops in $M) with copy-paste augmentation
# (--copy-paste 0.5: half the training chips given objects of another chip of a similar GSD), lr 1e-4, 3 epochs;
# thresholds tuned on the real validation strips. Tried as the stage-8 half of the soup for readings at 1 m or finer.
set -euo pipefail
INIT=${INIT:-stage8.pt} OUT=${OUT:-stage19.pt} EPOCHS=${EPOCHS:-3} LR=${LR:-1e-4} SEED=${SEED:-19} \
  SYNTH_SEED=${SYNTH_SEED:-7500} exec bash "$(dirname "$0")/stage7.sh" --copy-paste "${COPY_PASTE:-0.5}" "$@"
