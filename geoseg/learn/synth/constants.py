"""Classes, size limits and colours of synthetic scenes."""

from __future__ import annotations

CLASSES = ("building", "field", "ship")
LABEL_LAYER = "labels"
MIN_BUILDING_WIDTH_PX = 6.0
MIN_SHIP_BEAM_PX = 4.0
MIN_OBJECT_PIXELS = 12
# a field piece smaller than this is a scrap, not a parcel: of the 1,453 hand-drawn NAIP
# parcels none is under 100 m² and 1 % under 356 m²
MIN_FIELD_AREA_M2 = 300.0
MAX_BUILDINGS = 400
MAX_SHIPS = 40
MAX_FIELDS = 300
MARINA_MAX_GSD_M = 1.0
MAX_BOATS_PER_BERTH = 30
UINT16_MAX = 4095
_NARROWEST_HOUSE_M = 7.0
_BUILDING, _FIELD, _SHIP = range(3)

Rgb = tuple[float, float, float]
GRASS: Rgb = (0.27, 0.35, 0.18)
SOIL: Rgb = (0.50, 0.42, 0.33)
URBAN_GROUND: Rgb = (0.38, 0.40, 0.33)
SAND: Rgb = (0.76, 0.70, 0.56)
WATER: Rgb = (0.06, 0.14, 0.18)
ASPHALT: Rgb = (0.33, 0.33, 0.35)
DIRT: Rgb = (0.56, 0.50, 0.40)
CONCRETE: Rgb = (0.62, 0.61, 0.58)
TREE: Rgb = (0.08, 0.18, 0.07)
FOAM: Rgb = (0.86, 0.89, 0.90)
CLOUD: Rgb = (0.93, 0.93, 0.94)
FIELD_COLOURS: tuple[Rgb, ...] = (
    (0.22, 0.40, 0.12),  # young crop
    (0.34, 0.49, 0.17),  # grass ley
    (0.72, 0.63, 0.36),  # ripe wheat
    (0.62, 0.56, 0.41),  # stubble
    (0.43, 0.33, 0.23),  # ploughed
    (0.78, 0.72, 0.22),  # rapeseed
)
ROOF_COLOURS: tuple[Rgb, ...] = (
    (0.58, 0.27, 0.17),  # terracotta
    (0.45, 0.21, 0.16),  # dark red tile
    (0.26, 0.26, 0.29),  # slate
    (0.42, 0.42, 0.44),  # grey
    (0.36, 0.27, 0.20),  # brown
    (0.31, 0.35, 0.43),  # blue-grey
)
FLAT_ROOF_COLOURS: tuple[Rgb, ...] = ((0.80, 0.80, 0.78), (0.62, 0.62, 0.62), (0.30, 0.30, 0.31))
CONCRETE_ROOF_COLOURS: tuple[Rgb, ...] = (
    (0.70, 0.67, 0.61),
    (0.58, 0.56, 0.52),
    (0.76, 0.72, 0.66),
)
HULL_COLOURS: tuple[Rgb, ...] = (
    (0.85, 0.85, 0.83),
    (0.50, 0.14, 0.12),
    (0.14, 0.15, 0.18),
    (0.16, 0.27, 0.45),
    (0.50, 0.51, 0.52),
    (0.20, 0.35, 0.25),
)
BOAT_COLOURS: tuple[Rgb, ...] = (
    (0.92, 0.92, 0.90),  # white gel coat, most boats
    (0.92, 0.92, 0.90),
    (0.92, 0.92, 0.90),
    (0.85, 0.86, 0.84),
    (0.16, 0.27, 0.45),
    (0.14, 0.15, 0.18),
    (0.60, 0.16, 0.14),
)
CARGO_COLOURS: tuple[Rgb, ...] = (
    (0.70, 0.20, 0.15),
    (0.20, 0.35, 0.60),
    (0.75, 0.60, 0.20),
    (0.30, 0.55, 0.35),
    (0.80, 0.80, 0.78),
    (0.40, 0.28, 0.22),
)


_SLOT_DEPTH_M = 30.0
_SETBACK_M = (3.0, 8.0)
