"""Assemble a scene from its batch results as they come: stitch, measure, write, commit.

A :class:`SceneAssembler` takes the :class:`~geoseg.plan.BatchResult` of each batch in the
order the batches finish. Each pass of the scene has its own streaming stitcher
(:class:`~geoseg.stitch.StreamingStitcher`) on its own working grid: an object is final, and
leaves memory, as soon as no unfinished tile can change it. Final objects are turned into rows
in the scene's CRS (pixel-exact outline, simplified or squared, geodesic area and perimeter,
ship dimensions, a stable id) and appended to the scene's outputs through an
:class:`~geoseg.output.OutputStream`, which writes them under temporary names. Only
:meth:`SceneAssembler.finish` puts the files in place, all or none, after checking that the
scene did not change while it was read. Memory then depends on the frontier of unfinished
tiles, not on the number of objects in the scene.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np

from geoseg.config import RunOptions
from geoseg.measures import SHIP_CLASSES, SHIP_COLUMNS, ship_dimensions
from geoseg.model.protocol import ModelInfo
from geoseg.output import OutputStream, empty_layer, layer_columns
from geoseg.plan import BatchResult, ScenePlan
from geoseg.reading_merge import ReadingMerger, merge_readings
from geoseg.scene import SceneInfo, check_unchanged
from geoseg.stitch import StitchedObject, StreamingStitcher, stitch
from geoseg.vectorize import GeoMeasures, geodesic_measures_bulk, stable_ids, to_crs_polygons

__all__ = [
    "REGULAR_CLASSES",
    "WRITE_OBJECTS",
    "RunResult",
    "SceneAssembler",
    "SceneVisuals",
    "objects_to_layers",
    "run_metadata",
    "scored_enough",
    "stitch_passes",
]

REGULAR_CLASSES = frozenset({"building"})
"""Classes whose outlines ``--regularize`` squares."""


@dataclass(slots=True)
class RunResult:
    """What a run did: the files it wrote, objects per class, tiles, seconds, and the model."""

    scene: Path
    outputs: list[Path]
    counts: dict[str, int]
    n_tiles: int
    n_skipped: int
    seconds: float
    model: ModelInfo
    notes: list[str] = field(default_factory=list)
    class_gsd_m: dict[str, float] = field(default_factory=dict)
    class_readings_m: dict[str, tuple[float, ...]] = field(default_factory=dict)
    class_readings_min_score: dict[str, tuple[float, ...]] = field(default_factory=dict)
    class_min_score: dict[str, float] = field(default_factory=dict)
    class_tta_views: dict[str, int] = field(default_factory=dict)

    @property
    def tiles_per_second(self) -> float:
        return self.n_tiles / self.seconds if self.seconds > 0 else float("inf")


WRITE_OBJECTS = 1024
"""Final objects gathered before they are written: each write has a fixed cost (frames, GPKG
and GeoJSON appends, the preview and web map chunks), so a few objects at a time, as a fast
model in plan order finalizes them, would make the writer the bottleneck."""


class SceneAssembler:
    """Stitches and writes one scene while its batches finish (see the module doc).

    Use it as a context manager: leaving it without :meth:`finish` (an error, Ctrl-C) removes
    whatever was staged and leaves the output folder as it was.
    """

    def __init__(self, plan: ScenePlan, outdir: str | Path, *, stem: str | None = None) -> None:
        self.plan = plan
        self.stem = stem or plan.scene.stem
        merge_iou = plan.options.merge_iou
        self._stitchers = [StreamingStitcher(p.grid, merge_iou=merge_iou) for p in plan.passes]
        merged = plan.merged_classes()
        self._merger = ReadingMerger(_transforms(plan), merged) if merged else None
        # the passes that read a merged class: only their frontiers hold its objects back
        self._merging = [any(k in merged for k in p.classes) for p in plan.passes]
        self._final: list[list[StitchedObject]] = [[] for _ in plan.passes]  # not written yet
        self._thresholds = plan.pass_thresholds()
        self._measures = GeoMeasures(plan.scene.crs)
        self._n_tiles = 0
        self._n_skipped = 0
        self._visuals = SceneVisuals(plan, self.stem) if _wants_visuals(plan) else None
        self._output = OutputStream(
            outdir,
            self.stem,
            classes=plan.model.classes,
            crs=plan.scene.crs,
            metadata=run_metadata(plan),
            formats=plan.options.formats,
            extras=self._visuals.writers if self._visuals else None,
        )

    def __enter__(self) -> SceneAssembler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def abort(self) -> None:
        """Discard what was staged (a no-op once committed) and the visuals' temporary files."""
        self._output.abort()
        if self._visuals is not None:
            self._visuals.close()

    def add(self, result: BatchResult) -> None:
        """Take one batch's fragments; write the objects they make final."""
        tiles = [t.index_yx for t in self.plan.batch_tiles(result.batch_index)]
        final = self._stitchers[result.pass_index].add(tiles, result.fragments)
        self._n_tiles += result.n_tiles
        self._n_skipped += result.n_skipped
        self._take(result.pass_index, final)
        if self._merger is not None:
            frontiers = [
                s.frontier_row() if merging else float("inf")
                for s, merging in zip(self._stitchers, self._merging, strict=True)
            ]
            for k, obj in self._merger.advance(frontiers):
                self._final[k].append(obj)
        for k, waiting in enumerate(self._final):
            if len(waiting) >= WRITE_OBJECTS:
                self._write(k, waiting)
                waiting.clear()

    def _take(self, pass_index: int, final: Sequence[StitchedObject]) -> None:
        """Final objects of a pass that reach its thresholds: to the writer, or those of
        merged classes to the merger."""
        final = scored_enough(final, self._thresholds[pass_index])
        if self._merger is None:
            self._final[pass_index] += final
            return
        merged = self._merger.classes
        self._merger.add(pass_index, [o for o in final if o.label in merged])
        self._final[pass_index] += [o for o in final if o.label not in merged]

    def finish(self, *, seconds: float) -> RunResult:
        """Write what is left, check the scene is unchanged, and commit the outputs."""
        for k, stitcher in enumerate(self._stitchers):
            self._take(k, stitcher.finish())
        if self._merger is not None:
            for k, obj in self._merger.finish():
                self._final[k].append(obj)
        for k, waiting in enumerate(self._final):
            self._write(k, waiting)
            waiting.clear()
        for reading in self.plan.passes:
            check_unchanged(reading.scene)
        outputs = self._output.commit()
        return RunResult(
            scene=self.plan.path,
            outputs=outputs,
            counts=dict(self._output.counts),
            n_tiles=self._n_tiles,
            n_skipped=self._n_skipped,
            seconds=seconds,
            model=self.plan.model,
            notes=list(self.plan.notes),
            class_gsd_m=self.plan.class_gsd_m(),
            class_readings_m=self.plan.class_readings_m(),
            class_readings_min_score=self.plan.class_readings_min_score(),
            class_min_score=self.plan.class_min_score(),
            class_tta_views=self.plan.class_tta_views(),
        )

    @property
    def n_held(self) -> int:
        """Fragments and objects the stitchers (and the merge of readings) hold."""
        return self.n_merging + sum(s.n_fragments_held + s.n_objects_held for s in self._stitchers)

    @property
    def n_merging(self) -> int:
        """Objects of a class read at several GSDs that the merge of readings holds (waiting,
        or kept and remembered for later ones; see :mod:`geoseg.reading_merge`)."""
        return self._merger.n_held if self._merger is not None else 0

    @property
    def n_unwritten(self) -> int:
        """Final objects gathered for the next write (fewer than :data:`WRITE_OBJECTS` a pass
        between calls)."""
        return sum(len(f) for f in self._final)

    def _write(self, pass_index: int, objects: Sequence[StitchedObject]) -> None:
        if objects:
            reading = self.plan.passes[pass_index]
            rows = object_rows(objects, reading.scene, self.plan, self._measures)
            found = rows_to_layers(rows, self.plan, empty=False)
            self._output.write(found)
            if self._visuals is not None:
                self._visuals.add(found)


def run_metadata(plan: ScenePlan) -> dict[str, str]:
    """What every output layer records about the run (GeoPackage layer metadata)."""
    class_gsd = plan.class_gsd_m()
    twice = {  # {class: [[GSD, threshold], ...]} for the classes read at several GSDs
        name: [[round(g, 6), s] for g, s in readings]
        for name, readings in plan.class_readings().items()
        if len(readings) > 1
    }
    merged = {"geoseg_class_readings_m": json.dumps(twice)} if twice else {}
    cuts = plan.class_mask_threshold()
    if cuts:
        merged["geoseg_class_mask_threshold"] = json.dumps(cuts)
    views = plan.class_tta_views()
    if views:
        merged["geoseg_class_tta_views"] = json.dumps(views)
    fuse = plan.model.class_fuse_iou or {}
    fused = {name: iou for name, iou in fuse.items() if name in views}  # seen in several views
    if fused:
        merged["geoseg_class_fuse_iou"] = json.dumps(fused)
    moves = plan.model.class_box_refinements or {}
    refined = {name: n for name, n in moves.items() if name in class_gsd}
    if refined:
        merged["geoseg_class_box_refinements"] = json.dumps(refined)
    return {
        "geoseg_version": _version(),
        "geoseg_model": plan.model.name,
        "geoseg_model_checksum": plan.model.checksum,
        "geoseg_scene": plan.scene.path,
        "geoseg_gsd_m": f"{plan.scene.gsd_m:.6g}",
        "geoseg_class_gsd_m": json.dumps({c: round(g, 6) for c, g in class_gsd.items()}),
        "geoseg_class_min_score": json.dumps(plan.class_min_score()),
        "geoseg_options": json.dumps(plan.options.to_dict(), sort_keys=True),
        **merged,
    }


def stitch_passes(plan: ScenePlan, results: Sequence[BatchResult]) -> list[list[StitchedObject]]:
    """Each pass's fragments stitched on its own grid, all at once: one list per pass (a
    class read in several passes merged across them, :mod:`geoseg.reading_merge`)."""
    per_pass = [
        scored_enough(
            stitch(
                [f for r in results if r.pass_index == k for f in r.fragments],
                merge_iou=plan.options.merge_iou,
            ),
            thresholds,
        )
        for k, thresholds in enumerate(plan.pass_thresholds())
    ]
    merged = plan.merged_classes()
    return merge_readings(per_pass, _transforms(plan), merged) if merged else per_pass


def scored_enough(
    objects: Sequence[StitchedObject], thresholds: np.ndarray
) -> list[StitchedObject]:
    """The stitched objects that reach their class's threshold (tiles keep objects for
    stitching from a lower floor, :data:`~geoseg.plan.STITCH_FLOOR_SHARE` of it)."""
    return [o for o in objects if o.score >= thresholds[o.label]]


def _transforms(plan: ScenePlan) -> list[Any]:
    return [reading.scene.transform for reading in plan.passes]


def objects_to_layers(
    per_pass: Sequence[Sequence[StitchedObject]], plan: ScenePlan
) -> dict[str, gpd.GeoDataFrame]:
    """Stitched pixel-space objects, one sequence per pass of ``plan`` (each on its own
    working grid, :func:`stitch_passes`), to one GeoDataFrame per class in the scene's CRS."""
    measures = GeoMeasures(plan.scene.crs)
    rows: list[dict[str, Any]] = []
    for reading, found in zip(plan.passes, per_pass, strict=True):
        rows.extend(object_rows(found, reading.scene, plan, measures))
    return rows_to_layers(rows, plan)


def rows_to_layers(
    rows: Sequence[dict[str, Any]], plan: ScenePlan, *, empty: bool = True
) -> dict[str, gpd.GeoDataFrame]:
    """Rows of :func:`object_rows` as one GeoDataFrame per class of the model (``empty``: the
    classes without rows too), with the columns every output has."""
    by_class: dict[str, list[dict[str, Any]]] = {name: [] for name in plan.model.classes}
    for row in rows:
        by_class[row["class"]].append(row)
    layers = {}
    for name, found in by_class.items():
        if not found:
            if empty:
                layers[name] = empty_layer(name, plan.scene.crs)
            continue
        columns = layer_columns(name)
        frame = gpd.GeoDataFrame(
            found, columns=[*columns, "geometry"], geometry="geometry", crs=plan.scene.crs
        )
        layers[name] = frame.astype({c: "float64" for c in columns[2:]})
    return layers


def object_rows(
    objects: Sequence[StitchedObject],
    scene: SceneInfo,
    plan: ScenePlan,
    measures: GeoMeasures,
) -> list[dict[str, Any]]:
    """One output row per object: its outline in the scene's CRS and its measures.

    The outlines of a chunk are simplified, mapped and taken to lon/lat in bulk (one call
    each); only outlines that mapping made invalid are repaired one by one.
    """
    classes, options = plan.model.classes, plan.options
    outlines = _outlines(objects, classes, options)
    squared = np.array([o is not obj.polygon_px for o, obj in zip(outlines, objects, strict=True)])
    simplify = np.where(squared, 0.0, options.simplify_px)  # squared outlines stay as they are
    geometries = to_crs_polygons(np.array(outlines, dtype=object), scene.transform, simplify)
    lonlat = measures.to_lonlat(geometries)  # shapely.transform takes arrays: one call
    names = [classes[obj.label] for obj in objects]
    ids = stable_ids(scene.stem, names, np.array([o.polygon_px for o in objects], dtype=object))
    areas, perimeters = geodesic_measures_bulk(lonlat)
    rows = []
    for k, (obj, geometry, ll) in enumerate(zip(objects, geometries, lonlat, strict=True)):
        if geometry.is_empty:
            continue
        row = {
            "id": ids[k],
            "class": names[k],
            "score": round(obj.score, 4),
            "area_m2": float(areas[k]),
            "perimeter_m": float(perimeters[k]),
        }
        if names[k] in SHIP_CLASSES:
            row.update(zip(SHIP_COLUMNS, ship_dimensions(ll), strict=True))
        rows.append({**row, "geometry": geometry})
    return rows


def _outlines(
    objects: Sequence[StitchedObject], classes: Sequence[str], options: RunOptions
) -> list[Any]:
    outlines = [obj.polygon_px for obj in objects]
    squared = [k for k, obj in enumerate(objects) if classes[obj.label] in REGULAR_CLASSES]
    if options.regularize and squared:
        from geoseg.regularize import regularize_outlines

        squares = regularize_outlines([outlines[k] for k in squared])
        for k, outline in zip(squared, squares, strict=True):
            outlines[k] = outline
    return outlines


def _wants_visuals(plan: ScenePlan) -> bool:
    return plan.options.preview or plan.options.webmap


class SceneVisuals:
    """The preview PNG and the web map of a scene, drawn and converted a chunk of objects at
    a time while the run writes them (:meth:`add`), so that only saving is left at the end."""

    def __init__(self, plan: ScenePlan, stem: str) -> None:
        from geoseg.preview import PreviewCanvas, read_quicklook
        from geoseg.webmap import WebMapBuilder

        self.stem = stem
        opts, classes = plan.options, plan.model.classes
        look = read_quicklook(plan.scene)
        self._preview = PreviewCanvas(look, classes) if opts.preview else None
        title = f"geoseg: {stem} ({plan.model.name})"
        self._webmap = WebMapBuilder(look, classes, title=title) if opts.webmap else None

    def add(self, layers: Mapping[str, gpd.GeoDataFrame]) -> None:
        for name, frame in layers.items():
            for visual in (self._preview, self._webmap):
                if visual is not None:
                    visual.add(name, frame)

    def writers(self) -> list[tuple[str, Callable[[Path], None]]]:
        """``(file name, writer)`` of each visual output, for the output stream's commit."""
        found: list[tuple[str, Callable[[Path], None]]] = []
        if self._preview is not None:
            found.append((f"{self.stem}_preview.png", self._preview.save))
        if self._webmap is not None:
            found.append((f"{self.stem}.html", self._webmap.write))
        return found

    def close(self) -> None:
        if self._webmap is not None:
            self._webmap.close()


def _version() -> str:
    from geoseg._version import __version__

    return __version__
