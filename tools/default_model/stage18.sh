#!/usr/bin/env bash
# Stage 18 (session 40): from stage8.pt, the data of stage 8 (marina crops in $M) plus 60 synthetic dense-town crops at
# 0.25-0.6 m (written by dense_town_scenes.py into $T), lr 1e-4, 3 epochs; thresholds tuned on the real validation
# strips. Its weights go into the soup for readings at 1 m or finer (model card).
set -euo pipefail
T=${T:-dense}
DENSE=()
for f in "$T"/dense_*.tif; do DENSE+=(--images "$f" --labels "${f%.tif}.gpkg" --label-class building --scales 1); done
INIT=${INIT:-stage8.pt} OUT=${OUT:-stage18.pt} EPOCHS=${EPOCHS:-3} LR=${LR:-1e-4} SEED=${SEED:-18} \
  SYNTH_SEED=${SYNTH_SEED:-7400} exec bash "$(dirname "$0")/stage7.sh" "${DENSE[@]}" "$@"
