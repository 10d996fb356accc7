"""geoseg eval: hand-computed AP, precision, recall and F1; CRSs; classes; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from shapely import box

from geoseg.cli import main
from geoseg.errors import LabelError
from geoseg.learn.evaluate import average_precision, evaluate, evaluate_files, read_polygons

UTM = "EPSG:32632"
X0, Y0 = 500_000.0, 5_000_000.0  # a real place in zone 32N, so reprojection is meaningful


def _boxes(*bounds, cls="building", scores=None, crs=UTM) -> gpd.GeoDataFrame:
    data = {"class": [cls] * len(bounds)}
    if scores is not None:
        data["score"] = scores
    geoms = [box(X0 + a, Y0 + b, X0 + c, Y0 + d) for a, b, c, d in bounds]
    return gpd.GeoDataFrame(data, geometry=geoms, crs=crs)


def _metrics(pred, ref, **kwargs):
    return evaluate(pred, ref, **kwargs)["classes"]["building"]


def test_perfect_match_gives_ap_and_f1_of_one():
    ref = _boxes((0, 0, 10, 10), (20, 0, 30, 8), (0, 40, 50, 45))
    m = _metrics(ref, ref)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 0, 0)
    assert m["ap"] == m["ap50"] == m["ap75"] == m["f1"] == m["precision"] == m["recall"] == 1.0


def test_iou_of_0_4_is_a_miss_at_0_5_and_a_hit_at_0_4():
    ref = _boxes((0, 0, 4, 10))
    pred = _boxes((0, 0, 10, 10))  # IoU = 40 / 100
    m = _metrics(pred, ref)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)
    assert m["precision"] == m["recall"] == m["f1"] == m["ap"] == m["ap50"] == 0.0
    assert _metrics(pred, ref, iou=0.4)["tp"] == 1


def test_a_duplicate_is_a_false_positive():
    ref = _boxes((0, 0, 10, 10))
    pred = _boxes((0, 0, 10, 10), (0, 0, 10, 10), scores=[0.9, 0.8])
    m = _metrics(pred, ref)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)
    assert m["precision"] == 0.5 and m["recall"] == 1.0 and m["f1"] == pytest.approx(2 / 3)
    assert m["ap"] == 1.0  # the duplicate ranks below the hit: COCO AP does not mind


def test_greedy_matching_goes_by_score_not_by_iou():
    ref = _boxes((0, 0, 10, 10))
    pred = _boxes((0, 0, 10, 6), (0, 0, 10, 9.5), scores=[0.9, 0.5])  # IoU 0.6, then 0.95
    m = _metrics(pred, ref)
    assert (m["tp"], m["fp"]) == (1, 1)
    assert m["ap50"] == 1.0
    assert m["ap75"] == 0.5  # at 0.75 the first is a miss and the second a hit, ranked below


def test_ranking_and_101_point_interpolation():
    ref = _boxes((0, 0, 10, 10), (20, 0, 30, 10))
    # ranked: hit, false positive, hit -> precision envelope 1, 2/3, 2/3 at recall .5, .5, 1
    pred = _boxes((0, 0, 10, 10), (50, 50, 60, 60), (20, 0, 30, 10), scores=[0.9, 0.8, 0.7])
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    m = _metrics(pred, ref)
    assert m["ap50"] == pytest.approx(expected) and m["ap"] == pytest.approx(expected)
    # a false positive ranked first halves the precision at every recall
    pred = _boxes((50, 50, 60, 60), (0, 0, 10, 10), scores=[0.9, 0.1])
    assert _metrics(pred, _boxes((0, 0, 10, 10)))["ap"] == pytest.approx(0.5)


def test_average_precision_edge_cases():
    assert average_precision(np.array([], dtype=bool), 0) is None
    assert average_precision(np.array([], dtype=bool), 3) == 0.0
    assert average_precision(np.array([True]), 2) == pytest.approx(51 / 101)


def test_crs_mismatch_is_reprojected_not_ignored():
    ref = _boxes((0, 0, 10, 10), (30, 0, 42, 9))
    pred = ref.to_crs("EPSG:4326")
    result = evaluate(pred, ref)
    assert result["crs"] == UTM and result["classes"]["building"]["ap"] == 1.0
    relabelled = ref.set_crs("EPSG:32633", allow_override=True)  # same numbers, other place
    assert evaluate(relabelled, ref)["classes"]["building"]["tp"] == 0


def test_geographic_reference_is_measured_in_metres():
    ref = _boxes((0, 0, 10, 10), (30, 0, 42, 9)).to_crs("EPSG:4326")
    result = evaluate(ref, ref)
    assert result["crs"] == UTM and result["classes"]["building"]["f1"] == 1.0


def test_no_crs_is_an_error():
    ref = _boxes((0, 0, 10, 10))
    with pytest.raises(LabelError, match="no CRS"):
        evaluate(ref.set_crs(None, allow_override=True), ref)


def test_classes_are_scored_separately_and_averaged():
    ref = pd_concat(_boxes((0, 0, 10, 10)), _boxes((20, 0, 30, 10), cls="ship"))
    pred = pd_concat(_boxes((0, 0, 10, 10)), _boxes((20, 0, 30, 10), cls="field"))
    result = evaluate(pred, ref)
    assert set(result["classes"]) == {"building", "field", "ship"}
    assert result["classes"]["building"]["f1"] == 1.0
    assert result["classes"]["ship"]["recall"] == 0.0 and result["classes"]["ship"]["ap"] == 0.0
    field = result["classes"]["field"]
    assert field["fp"] == 1 and field["ap"] is None and field["recall"] is None
    assert result["mean"]["ap"] == 0.5  # over building and ship, the classes with references
    only = evaluate(pred, ref, classes=["building"])
    assert list(only["classes"]) == ["building"]


def test_reference_without_class_takes_ref_class_or_the_only_predicted_one():
    ref = _boxes((0, 0, 10, 10)).drop(columns="class")
    assert _metrics(_boxes((0, 0, 10, 10)), ref)["f1"] == 1.0
    pred = pd_concat(_boxes((0, 0, 10, 10)), _boxes((20, 0, 30, 10), cls="ship"))
    with pytest.raises(LabelError, match="--ref-class"):
        evaluate(pred, ref)
    result = evaluate(pred, ref, ref_class="building")
    assert result["classes"]["building"]["f1"] == 1.0 and result["classes"]["ship"]["fp"] == 1


def test_invalid_and_empty_predictions():
    ref = _boxes((0, 0, 10, 10))
    bowtie = shapely.Polygon([(X0, Y0), (X0 + 10, Y0 + 10), (X0 + 10, Y0), (X0, Y0 + 10)])
    pred = gpd.GeoDataFrame({"class": ["building"]}, geometry=[bowtie], crs=UTM)
    assert _metrics(pred, ref)["n_pred"] == 1  # repaired, not dropped
    m = _metrics(pred.iloc[:0], ref)
    assert (m["n_pred"], m["fn"], m["ap"], m["precision"]) == (0, 1, 0.0, None)


def pd_concat(*frames: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"class": np.concatenate([f["class"] for f in frames])},
        geometry=np.concatenate([f.geometry.to_numpy() for f in frames]),
        crs=frames[0].crs,
    )


# -- files and the CLI ----------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """Predictions as `geoseg run` writes them (one layer per class), reference with a column."""
    pred = tmp_path / "pred.gpkg"
    _boxes((0, 0, 10, 10), (20, 0, 30, 10), scores=[0.9, 0.4]).drop(columns="class").to_file(
        pred, layer="building"
    )
    _boxes((0, 40, 50, 45), cls="field").drop(columns="class").to_file(pred, layer="field")
    ref = tmp_path / "ref.gpkg"
    pd_concat(_boxes((0, 0, 10, 10)), _boxes((0, 40, 50, 45), cls="field")).to_crs(
        "EPSG:3857"
    ).to_file(ref, layer="truth")
    return pred, ref


def test_class_from_layer_names_and_all_layers_read(files):
    pred, ref = files
    frame = read_polygons(pred)
    assert sorted(frame["class"]) == ["building", "building", "field"]
    result = evaluate_files(pred, ref)
    assert result["crs"] == "EPSG:3857"
    building = result["classes"]["building"]
    assert (building["tp"], building["fp"], building["fn"]) == (1, 1, 0)
    assert result["classes"]["field"]["f1"] == 1.0


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_file_without_crs_is_an_error(tmp_path: Path):
    path = tmp_path / "nocrs.gpkg"
    _boxes((0, 0, 10, 10)).set_crs(None, allow_override=True).to_file(path)
    with pytest.raises(LabelError, match="no CRS"):
        read_polygons(path)


def test_cli_prints_a_table_and_writes_json(files, tmp_path: Path, capsys):
    pred, ref = files
    out = tmp_path / "scores.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(pred), str(ref), "--iou", "0.5", "--json", str(out)])
    assert exit_info.value.code == 0
    table = capsys.readouterr().out
    assert "building" in table and "field" in table and "AP50" in table
    result = json.loads(out.read_text())
    assert result["classes"]["building"]["precision"] == 0.5
    assert result["classes"]["field"]["ap"] == 1.0
    assert not list(tmp_path.glob(".*partial"))


def test_cli_json_to_stdout_and_class_options(files, capsys):
    pred, ref = files
    with pytest.raises(SystemExit):
        main(["eval", str(pred), str(ref), "--json", "-", "--classes", "field"])
    result = json.loads(capsys.readouterr().out)
    assert list(result["classes"]) == ["field"] and result["mean"]["f1"] == 1.0


def test_cli_missing_file_exits_2_with_one_line(files, capsys):
    pred, _ = files
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(pred), str(pred.parent / "missing.gpkg")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and "missing.gpkg: no such file" in err and "\n" not in err


def test_cli_bad_iou_is_a_usage_error(files):
    pred, ref = files
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(pred), str(ref), "--iou", "1.5"])
    assert exit_info.value.code == 2


def test_synthetic_labels_score_perfectly_against_themselves(tmp_path: Path):
    from geoseg.learn.synth import write_scene

    _, labels = write_scene(tmp_path / "s.tif", size_wh=(128, 128), gsd_m=2.0, seed=1)
    result = evaluate_files(labels, labels)
    assert set(result["classes"]) == {"building", "field", "ship"}
    assert all(m["ap"] == 1.0 and m["f1"] == 1.0 for m in result["classes"].values())
