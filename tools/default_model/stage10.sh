#!/usr/bin/env bash
# Stage 10: from stage8.pt, the data of stage 8 with the Sentinel-2 sources also read finer than their native
# 8-10 m, where geoseg run now reads them (ships at 5 m, fields at 7 m): Busan at 0.6-1 x its GSD, Denmark at
# 0.6-1 x; lr 5e-5, 3 epochs; thresholds tuned on the real validation strips.
set -euo pipefail
INIT=${INIT:-stage8.pt} OUT=${OUT:-stage10.pt} EPOCHS=${EPOCHS:-3} LR=${LR:-5e-5} SEED=${SEED:-10} \
  SYNTH_SEED=${SYNTH_SEED:-7300} BUSAN_SCALES=${BUSAN_SCALES:-0.6,0.7,0.85,1} \
  DENMARK_SCALES=${DENMARK_SCALES:-0.6,0.7,1} exec bash "$(dirname "$0")/stage7.sh" "$@"
