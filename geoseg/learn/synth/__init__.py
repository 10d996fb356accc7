"""Synthetic labelled aerial scenes: buildings, fields and ships with exact polygon labels.

A scene is laid out in pixel space (x = column, y = row, both to the right and down): a
coast with water on one side, a town with a street grid, farmland cut by tracks, a pier.
Objects are polygons there; each is clipped to the scene (its largest part kept), moved to
map coordinates, and that very polygon is rasterized (pixel centres inside) to paint it. So
the labels match the pixels exactly; objects never overlap (terraced houses and ships moored
side by side touch). An object under a cloud stays labelled; one with fewer than
``MIN_OBJECT_PIXELS`` pixels in the scene, or a field piece of less than
``MIN_FIELD_AREA_M2`` (300 m²) in it, is neither labelled nor drawn: its ground is painted
as the land around it.

Sizes follow the ground sampling distance (GSD): buildings 8-30 m, ships 20-250 m, fields
100-800 m across, roads 4-10 m wide; at 1 m GSD or finer half the piers are marina berths,
lined with small boats of 5-15 m moored bow-in (each boat a ship instance). A
``dense_town`` packs its blocks with rows of small houses a metre or two apart, and at 1 m or
finer its roofs show corrugated metal, parapets, water tanks and stair houses. Where a real
size would be too small to learn from, it is enlarged, and only then:

- buildings: the urban fabric (footprints, heights, setbacks, streets, blocks) is scaled by
  ``max(1, MIN_BUILDING_WIDTH_PX * gsd / 7 m)`` so the narrowest house is 6 px wide. Nothing
  changes up to 1.17 m GSD; at 10 m GSD houses become 60-250 m blocks and warehouses.
- ships: a ship whose beam would be under ``MIN_SHIP_BEAM_PX`` is enlarged, keeping its
  shape; at 10 m GSD every ship is about 18-30 px long, like Sentinel-2 vessels.
- fields need nothing (at least 10 px at 10 m GSD).

Counts are capped (``MAX_BUILDINGS``, ``MAX_SHIPS``, ``MAX_FIELDS``) so coarse scenes stay
fast. Water, farmland and a town each take a part of every scene, so that a scene of the
default size has objects of each class at any GSD from 0.5 to 10 m (even 256 x 256 scenes
do, for the seeds tried).
The CRS is a real UTM zone (EPSG:326xx) and origin, both drawn from the seed; everything is
deterministic by seed. ``uint16`` output is the same scene scaled to 0..4095 (12-bit).

Modules, in the order a scene is made (:func:`render_scene` in ``scene``): ``layout`` (zones,
roads, piers, sun), ``fields``, ``buildings`` (with ``roofs``, the details of a dense town's
roofs, drawn by a generator of their own) and ``ships`` (objects added to the collection
of ``objects``), ``labels`` (clip, map, rasterize), ``render`` (paint, atmosphere, noise);
``constants`` and ``geometry`` are shared. Each random step has its own generator
(spawned from the seed in a fixed order), so a scene depends on the seed alone.
"""

from __future__ import annotations

from geoseg.learn.synth.constants import CLASSES, LABEL_LAYER
from geoseg.learn.synth.scene import SyntheticScene, make_scene, render_scene, write_scene

__all__ = [
    "CLASSES",
    "LABEL_LAYER",
    "SyntheticScene",
    "make_scene",
    "render_scene",
    "write_scene",
]
