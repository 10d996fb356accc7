#!/usr/bin/env bash
# The default's third weight set (session 36), for tiles read over 1 m and up to 3 m: stage 8 (the default's own
# weights) trained 5 epochs x 200 steps at lr 1e-4 on what those readings see, and nothing else:
#   - 60 synthetic 1,024 px scenes at 0.5 m (seeds 9000-9059, a third uint16) and 20 at 0.3-0.75 m (9100-9119),
#     read at 3 and 4 x their GSD: the view in which `geoseg run` reads a small sub-metre scene's fields (the
#     small-scene rule) and its second ship reading;
#   - 20 synthetic 768 px scenes drawn at 1-3 m (9200-9219), at their own GSD;
#   - the 30 NAIP training chips at 1.5, 2 and 3 m, the OAM z19 clusters but nairobi_2 at 4 and 6 x (1.2, 1.8 m),
#     and SpaceNet Atlanta at 1.5 and 2 m.
# The scenes are written to $F (default band13) when missing. Then, from the repository root:
#   python tools/set_weights_by_gsd.py geoseg/model/weights/default.pt 1:soup_stage8_stage2_ship8.pt \
#       3:band13.pt --half 3
set -euo pipefail
D=${D:-../shared/data}
F=${F:-band13}
mkdir -p "$F"
ARGS=()
scene() {  # seed gsd size scales
  local out="$F/synth_$1.tif" dtype=uint8
  [ "$1" -lt 9100 ] && [ $(($1 % 3)) = 0 ] && dtype=uint16
  [ -f "$out" ] && [ -f "${out%.tif}.gpkg" ] ||
    python -m geoseg synth "$out" --seed "$1" --gsd "$2" --size "$3" "$3" --dtype "$dtype" > /dev/null
  ARGS+=(--images "$out" --labels "${out%.tif}.gpkg" --label-class field --scales "$4")
}
uniform() { python -c "import random; random.seed($1); print(round(random.uniform($2, $3), 3))"; }
for seed in $(seq 9000 9059); do scene "$seed" 0.5 1024 3,4; done
for seed in $(seq 9100 9119); do scene "$seed" "$(uniform "$seed" 0.3 0.75)" 1024 3,4; done
for seed in $(seq 9200 9219); do scene "$seed" "$(uniform "$seed" 1.0 3.0)" 768 1; done
for name in $(python -c "import json; print(' '.join(json.load(open('$D/fields-naip/split.json'))['train']))"); do
  ARGS+=(--images "$D/fields-naip/$name.tif" --labels "$D/fields-naip/$name.gpkg" --label-class field --scales 1.5,2,3)
done
for image in "$D"/buildings-oam/*_z19.tif; do
  case "$image" in *nairobi_2*) continue ;; esac
  ARGS+=(--images "$image" --labels "${image%.tif}.gpkg" --label-class building --scales 4,6)
done
ARGS+=(--images "$D/buildings-atlanta/atlanta_pan.tif" --labels "$D/buildings-atlanta/atlanta_buildings.geojson"
  --label-class building --scales 3,4)
exec python -m geoseg -v train --threads 2 "${ARGS[@]}" "$@" \
  --classes building,field,ship --init "${INIT:-stage8.pt}" --chip-size 256 --val-fraction 0.15 \
  --epochs "${EPOCHS:-5}" --steps-per-epoch 200 --batch-size 4 --lr "${LR:-1e-4}" --val-every 0 --tune-on all \
  --seed "${SEED:-36}" -o "${OUT:-band13.pt}"
