#!/usr/bin/env bash
# Stage 7: from stage6.pt, the data of stage 6 plus 40 synthetic marina crops (small boats at 0.3-1 m,
# written by marina_scenes.py into $M), lr 1e-4, 3 epochs; thresholds tuned on the real validation strips.
set -euo pipefail
M=${M:-marina}
MARINA=()
# --label-class only names files without a class column: the crops have one
for f in "$M"/marina_*.tif; do MARINA+=(--images "$f" --labels "${f%.tif}.gpkg" --label-class ship --scales 1); done
INIT=${INIT:-stage6.pt} OUT=${OUT:-stage7.pt} EPOCHS=${EPOCHS:-3} LR=${LR:-1e-4} SEED=${SEED:-7} \
  SYNTH_SEED=${SYNTH_SEED:-7100} exec bash "$(dirname "$0")/stage4.sh" "${MARINA[@]}" "$@"
