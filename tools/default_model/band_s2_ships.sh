#!/usr/bin/env bash
# A weight set for Sentinel-2 ship readings (session 45): stage 8 (the default's coarse weights) trained on what
# ships read at 4-6.5 m see, at the scales `geoseg run` reads them (a 10 m scene's ships at 6 m, a Web Mercator
# sen2ships scene's at 5 m on the ground, 6 m in its units), which stage 8 never saw (it read Busan at 7-12 m):
#   - Busan (sen2ships, west 85 %) read at 0.5, 0.6 and 0.7 x its 10 m pixels;
#   - 40 synthetic 10 m scenes (seeds 9700-9739, every other uint16) read at 6 m, 20 drawn at 8.3 m read at 5 m
#     (9740-9759) and 20 drawn at 5 m read at 5 m (9760-9779), every class labelled.
# The scenes are written to $F (default band_s2) when missing. From the repository root:
#   D=../shared/data bash tools/default_model/band_s2_ships.sh      # writes band_s2.pt
set -euo pipefail
D=${D:-../shared/data}
F=${F:-band_s2}
mkdir -p "$F"
ARGS=()
scene() {  # seed gsd scales
  local out="$F/synth_$1.tif" dtype=uint8
  [ $(($1 % 2)) = 0 ] && dtype=uint16
  [ -f "$out" ] && [ -f "${out%.tif}.gpkg" ] ||
    python -m geoseg synth "$out" --seed "$1" --gsd "$2" --dtype "$dtype" > /dev/null
  ARGS+=(--images "$out" --labels "${out%.tif}.gpkg" --label-class - --scales "$3")
}
for seed in $(seq 9700 9739); do scene "$seed" 10 0.6; done
for seed in $(seq 9740 9759); do scene "$seed" 8.3 0.6; done
for seed in $(seq 9760 9779); do scene "$seed" 5 1; done
ARGS+=(--images "$D/ships-sen2ships/busan.tif" --labels "$D/ships-sen2ships/busan_ships.geojson"
  --label-class ship --scales 0.5,0.6,0.7)
exec python -m geoseg -v train --threads 2 "${ARGS[@]}" "$@" \
  --classes building,field,ship --init "${INIT:-default}" --chip-size 256 --val-fraction 0.15 \
  --epochs "${EPOCHS:-5}" --steps-per-epoch 200 --batch-size 4 --lr "${LR:-1e-4}" --val-every 0 --tune-on all \
  --seed "${SEED:-45}" -o "${OUT:-band_s2.pt}"
