#!/usr/bin/env bash
# Stage 8: from stage7.pt, the data of stage 7 plus 40 more marina crops at 0.35-0.8 m (80 in $M: both runs of
# marina_scenes.py in its docstring), lr 1e-4, 3 epochs; thresholds tuned on the real validation strips.
set -euo pipefail
INIT=${INIT:-stage7.pt} OUT=${OUT:-stage8.pt} SEED=8 SYNTH_SEED=7200 exec bash "$(dirname "$0")/stage7.sh" "$@"
