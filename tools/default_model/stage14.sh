#!/usr/bin/env bash
# Stage 14 (session 24): from stage8.pt, the data of stage 8 plus synthetic Sentinel-2-like port crops (ships moored
# at quays, 5-10 m, port_scenes.py; written to $P when missing), lr 5e-5, 3 epochs. Stage 14 is 80 crops (seeds
# 9500-9579) with labels grown 0.7-1.3 px; stage 15 is 120 crops (9500-9619) grown 0.3-0.6 px:
#   P=port15 SEEDS="9500 9620" GROW="0.3 0.6" OUT=stage15.pt SEED=15 SYNTH_SEED=7500 bash stage14.sh
set -euo pipefail
P=${P:-port}
SEEDS=${SEEDS:-9500 9580}
GROW=${GROW:-0.7 1.3}
[ -f "$P/.done" ] || { python "$(dirname "$0")/port_scenes.py" "$P" --seeds $SEEDS --grow-px $GROW && touch "$P/.done"; }
PORTS=()
for f in "$P"/port_*.tif; do PORTS+=(--images "$f" --labels "${f%.tif}.gpkg" --label-class ship --scales 1); done
INIT=${INIT:-stage8.pt} OUT=${OUT:-stage14.pt} EPOCHS=${EPOCHS:-3} LR=${LR:-5e-5} SEED=${SEED:-14} \
  SYNTH_SEED=${SYNTH_SEED:-7400} exec bash "$(dirname "$0")/stage7.sh" "${PORTS[@]}" "$@"
