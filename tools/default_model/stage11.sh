#!/usr/bin/env bash
# Stage 11: from stage8.pt, the data of stage 8 with the OpenAerialMap buildings read at 0.3, 0.45 and 0.6 m
# (z19 at 1, 1.5 and 2 x its GSD, z20 at 2, 3 and 4 x), where geoseg run reads buildings twice; lr 5e-5,
# 3 epochs; thresholds tuned on the real validation strips.
set -euo pipefail
INIT=${INIT:-stage8.pt} OUT=${OUT:-stage11.pt} EPOCHS=${EPOCHS:-3} LR=${LR:-5e-5} SEED=${SEED:-11} \
  SYNTH_SEED=${SYNTH_SEED:-7400} OAM_Z19_SCALES=${OAM_Z19_SCALES:-1,1.5,2} \
  OAM_Z20_SCALES=${OAM_Z20_SCALES:-2,3,4} exec bash "$(dirname "$0")/stage7.sh" "$@"
