"""Colours per class and QGIS styles: a ``layer_styles`` table in the GeoPackage.

QGIS reads a layer's default style from the ``layer_styles`` table of a GeoPackage (the
layout it creates itself when a style is saved "in the database"), so each class layer opens
filled and outlined in its class colour. The same colours draw the preview and the web map.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

__all__ = ["class_colours", "layer_description", "qml_style", "sld_style", "write_gpkg_styles"]

_NAMED = {"building": "#e41a1c", "field": "#ffd92f", "ship": "#00e5ff"}
_PALETTE = ("#4daf4a", "#ff7f00", "#984ea3", "#f781bf", "#a65628", "#377eb8", "#999999")

_LAYER_STYLES = """
CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    f_table_catalog TEXT(256),
    f_table_schema TEXT(256),
    f_table_name TEXT(256),
    f_geometry_column TEXT(256),
    styleName TEXT(30),
    styleQML TEXT,
    styleSLD TEXT,
    useAsDefault BOOLEAN,
    description TEXT,
    owner TEXT(30),
    ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)
"""


def class_colours(classes: Sequence[str]) -> dict[str, str]:
    """A ``#rrggbb`` colour per class: fixed ones for building, field and ship, then a
    palette in class order."""
    spare = iter(c for c in _PALETTE)
    return {name: _NAMED.get(name) or next(spare, "#ffffff") for name in classes}


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def qml_style(colour: str, *, fill_alpha: int = 70) -> str:
    """A QGIS QML style: one fill symbol, translucent fill and a solid outline of ``colour``."""
    r, g, b = _rgb(colour)
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.34.0" styleCategories="Symbology">
  <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">
    <symbols>
      <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <Option type="Map">
            <Option type="QString" name="color" value="{r},{g},{b},{fill_alpha}"/>
            <Option type="QString" name="outline_color" value="{r},{g},{b},255"/>
            <Option type="QString" name="outline_style" value="solid"/>
            <Option type="QString" name="outline_width" value="0.5"/>
            <Option type="QString" name="outline_width_unit" value="MM"/>
            <Option type="QString" name="style" value="solid"/>
            <Option type="QString" name="joinstyle" value="miter"/>
          </Option>
        </layer>
      </symbol>
    </symbols>
  </renderer-v2>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


def sld_style(layer: str, colour: str) -> str:
    """The same style as OGC SLD 1.1 (for tools other than QGIS)."""
    name = escape(layer)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" xmlns:se="http://www.opengis.net/se" \
version="1.1.0">
  <NamedLayer>
    <se:Name>{name}</se:Name>
    <UserStyle>
      <se:Name>{name}</se:Name>
      <se:FeatureTypeStyle>
        <se:Rule>
          <se:Name>{name}</se:Name>
          <se:PolygonSymbolizer>
            <se:Fill>
              <se:SvgParameter name="fill">{colour}</se:SvgParameter>
              <se:SvgParameter name="fill-opacity">0.27</se:SvgParameter>
            </se:Fill>
            <se:Stroke>
              <se:SvgParameter name="stroke">{colour}</se:SvgParameter>
              <se:SvgParameter name="stroke-width">2</se:SvgParameter>
            </se:Stroke>
          </se:PolygonSymbolizer>
        </se:Rule>
      </se:FeatureTypeStyle>
    </UserStyle>
  </NamedLayer>
</StyledLayerDescriptor>
"""


def layer_description(class_name: str, count: int, metadata: Mapping[str, str]) -> str:
    """The one-line description of a class layer (``gpkg_contents.description``)."""
    model = metadata.get("geoseg_model", "a model")
    scene = Path(metadata.get("geoseg_scene", "the scene")).name
    tool = f"geoseg {metadata.get('geoseg_version', '')}".strip()
    plural = "" if count == 1 else "s"
    return (
        f"{count} {class_name} polygon{plural} found by {tool} with {model} in {scene}; "
        "columns: id, class, score, area_m2 and perimeter_m (geodesic, WGS84)"
    )


def write_gpkg_styles(
    path: Path, counts: Mapping[str, int], metadata: Mapping[str, str] | None = None
) -> None:
    """Add a default QGIS style per class layer and a layer description to GeoPackage ``path``.

    ``counts`` maps each class layer to its number of objects (for the description). As
    QGIS does, ``layer_styles`` is registered in ``gpkg_contents`` as an attributes table (GDAL
    then lists it as a layer without geometry, which is how QGIS finds it).
    """
    colours = class_colours(list(counts))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute(_LAYER_STYLES)
            con.execute(
                "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, "
                "description, last_change) VALUES ('layer_styles', 'attributes', "
                "'layer_styles', 'QGIS styles of the class layers', ?)",
                (now,),
            )
            for name, count in counts.items():
                geom = con.execute(
                    "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (name,)
                ).fetchone()
                con.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (name,))
                con.execute(
                    "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                    "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, "
                    "description, owner, ui, update_time) "
                    "VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL, ?)",
                    (
                        name,
                        geom[0] if geom else "geom",
                        f"geoseg {name}",
                        qml_style(colours[name]),
                        sld_style(name, colours[name]),
                        f"geoseg: {name} in {colours[name]}",
                        now,
                    ),
                )
                con.execute(
                    "UPDATE gpkg_contents SET description = ? WHERE table_name = ?",
                    (layer_description(name, count, metadata or {}), name),
                )
    finally:
        con.close()
