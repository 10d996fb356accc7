#!/usr/bin/env bash
# Stage 12: from stage8.pt, the data of stage 8 plus synthetic 0.4-0.6 m scenes of 1,024 px (40, seeds 9000-9039)
# and 0.5 m scenes of 2,048 px (30, seeds 9100-9129), read only at 4 x their GSD: the 2 m view of a 0.5 m scene in
# which geoseg run reads its fields (small-scene rule) and its second ship reading. lr 5e-5, 3 epochs. The scenes
# are written to $F (default fields05) when missing.
set -euo pipefail
F=${F:-fields05}
mkdir -p "$F"
EXTRA=()
for seed in $(seq 9000 9039) $(seq 9100 9129); do
  if [ "$seed" -lt 9100 ]; then size=1024; gsd=$(python -c "print((0.4, 0.5, 0.6)[$seed % 3])"); else size=2048; gsd=0.5; fi
  scene="$F/synth_${seed}.tif"
  [ -f "$scene" ] && [ -f "${scene%.tif}.gpkg" ] || python -m geoseg synth "$scene" --seed "$seed" --gsd "$gsd" --size "$size" "$size"
  EXTRA+=(--images "$scene" --labels "${scene%.tif}.gpkg" --label-class - --scales 4)
done
INIT=${INIT:-stage8.pt} OUT=${OUT:-stage12.pt} EPOCHS=${EPOCHS:-3} LR=${LR:-5e-5} SEED=${SEED:-12} \
  SYNTH_SEED=${SYNTH_SEED:-7500} exec bash "$(dirname "$0")/stage7.sh" "${EXTRA[@]}" "$@"
