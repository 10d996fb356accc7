"""geoseg eval: hand-computed AP, precision, recall, F1 and Boundary IoU; CRSs; classes; CLI."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from shapely import box

from geoseg.cli import main
from geoseg.errors import LabelError, UserInputError
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
    assert m["boundary_iou"] == m["boundary_ap"] == 1.0


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
    assert result["mean"]["boundary_ap"] == 0.5
    assert result["classes"]["ship"]["boundary_iou"] is None  # no match: no Boundary IoU
    assert result["mean"]["boundary_iou"] == 1.0  # building's; ship has none to average
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


# -- Boundary IoU and Boundary AP ----------------------------------------------------------
# G is the reference, P the prediction; bands are inner bands: X minus X eroded by d.


def test_shifted_square_boundary_iou_by_hand():
    ref = _boxes((0, 0, 100, 100))
    pred = _boxes((10, 0, 110, 100))  # shifted 10 m east; IoU = 9000 / 11000 = 0.818
    # d = 5: each band is 100^2 - 90^2 = 1900 m2. Both bands hold the strips y in [0, 5] and
    # [95, 100] over x in [10, 100]: 2 * 5 * 90 = 900; for y in [5, 95] no x in [10, 100] is
    # outside both G's core x in [5, 95] and P's core x in [15, 105]. Union 1900 + 1900 - 900.
    m = _metrics(pred, ref, boundary_width=5)
    assert m["tp"] == 1 and m["boundary_iou"] == pytest.approx(900 / 2900)
    assert m["ap"] == pytest.approx(0.7)  # IoU 0.818 passes the thresholds 0.50 ... 0.80
    assert m["boundary_ap"] == 0.0  # min(0.818, 0.310) passes none
    assert m["boundary_width_median_m"] == 5
    # Default d = 0.1 * sqrt(10000) = 10: bands 10000 - 80^2 = 3600; common strips
    # 2 * 10 * 90 = 1800 (x in [10, 100] is inside [10, 90] or [20, 110]); 1800 / 5400.
    m = _metrics(pred, ref)
    assert m["boundary_iou"] == pytest.approx(1 / 3) and m["boundary_width_median_m"] == 10


def test_square_inside_a_square_2d_larger_has_disjoint_bands():
    ref = _boxes((0, 0, 100, 100))
    # d = 5, P 10 m larger on every side: P's band lies outside [-5, 105]^2, off G altogether
    m = _metrics(_boxes((-10, -10, 110, 110)), ref, boundary_width=5)
    assert m["tp"] == 1 and m["boundary_iou"] == 0.0  # though IoU = 10000 / 14400 = 0.69
    assert m["ap"] == pytest.approx(0.4) and m["boundary_ap"] == 0.0  # 0.50 ... 0.65 pass
    # default d = 10, P 20 m larger: IoU 10000 / 19600 = 0.51 still matches, bands disjoint
    m = _metrics(_boxes((-20, -20, 120, 120)), ref)
    assert m["tp"] == 1 and m["boundary_iou"] == 0.0 and m["ap50"] == 1.0
    # P 4 m larger, d = 5: common band G minus [1, 99]^2 = 10000 - 98^2 = 396; G's band
    # 1900, P's 108^2 - 98^2 = 2060; 396 / (1900 + 2060 - 396) = 1 / 9
    m = _metrics(_boxes((-4, -4, 104, 104)), ref, boundary_width=5)
    assert m["boundary_iou"] == pytest.approx(1 / 9)


def test_boundary_iou_averages_the_matches_only():
    ref = _boxes((0, 0, 100, 100), (200, 0, 300, 100))
    # a hit (Boundary IoU 1), a duplicate of it (IoU 0.82, a false positive), and the shifted
    # square of the first test on the second reference (900 / 2900 at d = 5)
    pred = _boxes((0, 0, 100, 100), (10, 0, 110, 100), (210, 0, 310, 100), scores=[0.9, 0.8, 0.7])
    m = _metrics(pred, ref, boundary_width=5)
    assert (m["tp"], m["fp"]) == (2, 1)
    assert m["boundary_iou"] == pytest.approx((1 + 900 / 2900) / 2)


def test_the_references_width_serves_both_polygons():
    ref = _boxes((0, 0, 100, 100))  # d = 0.1 * sqrt(10000) = 10
    pred = _boxes((0, 0, 100, 121))  # its own d would be 0.1 * sqrt(12100) = 11
    # d = 10 for both: G's band 3600, P's 12100 - 80 * 101 = 4020; common: G's band less the
    # strip x in [10, 90], y in [90, 100] (more than 10 from P's outline): 3600 - 800 = 2800.
    # (With P's own d = 11: 2820 / (3600 + 4378 - 2820) = 0.547.)
    m = _metrics(pred, ref)
    assert m["boundary_iou"] == pytest.approx(2800 / (3600 + 4020 - 2800))  # 0.581


def test_object_at_most_2d_wide_is_all_band_so_boundary_iou_is_iou():
    ref = _boxes((0, 0, 4, 4))
    pred = _boxes((1, 0, 5, 4))  # IoU 12 / 20
    m = _metrics(pred, ref, boundary_width=5)  # eroding 4 m by 5 m leaves nothing
    assert m["boundary_iou"] == pytest.approx(0.6)
    assert m["ap"] == m["boundary_ap"] == pytest.approx(0.3)  # 0.50, 0.55, 0.60 pass


def test_boundary_ap_uses_the_minimum_not_boundary_iou_alone():
    ref = _boxes((0, 0, 100, 100))  # d = 10
    ring = ref.geometry[0].difference(box(X0 + 11, Y0 + 11, X0 + 89, Y0 + 89))
    pred = gpd.GeoDataFrame({"class": ["building"]}, geometry=[ring], crs=UTM)
    # IoU 3916 / 10000. The ring, 11 m wide, is all band; G's band (3600) lies inside it.
    m = _metrics(pred, ref, iou=0.3)
    assert m["tp"] == 1 and m["boundary_iou"] == pytest.approx(3600 / 3916)  # 0.92 > IoU
    assert m["ap"] == m["boundary_ap"] == 0.0


def test_geographic_and_web_mercator_inputs_give_the_metric_numbers():
    ref, pred = _boxes((0, 0, 100, 100)), _boxes((-4, -4, 104, 104))
    for crs in ("EPSG:4326", "EPSG:3857"):  # 3857 units are 0.71 m here (latitude 45)
        m = _metrics(pred.to_crs(crs), ref.to_crs(crs), boundary_width=5)
        assert m["boundary_iou"] == pytest.approx(1 / 9, rel=0.01)  # 0 with 5 units of 3857
        assert m["boundary_width_median_m"] == pytest.approx(5)
    pred = _boxes((10, 0, 110, 100))
    geographic = _metrics(pred.to_crs("EPSG:4326"), ref.to_crs("EPSG:4326"))
    assert geographic["boundary_iou"] == pytest.approx(1 / 3, rel=1e-4)
    assert geographic["boundary_width_median_m"] == pytest.approx(10, rel=1e-4)


def test_boundary_ap_never_exceeds_ap_with_disjoint_references():
    # Boundary AP's pair IoU is min(IoU, Boundary IoU) <= IoU; with disjoint references a
    # prediction reaches IoU 0.5 with one reference at most, so at every rank it has no more
    # true positives than AP's matching.
    rng = np.random.default_rng(7)
    refs, preds = [], []
    for i in range(60):
        x, y, w, h = 200.0 * (i % 10), 200.0 * (i // 10), *rng.uniform(5, 150, 2)
        refs.append((x, y, x + w, y + h))
        for _ in range(rng.integers(0, 3)):  # misses, hits and duplicates
            dx, dy = rng.normal(0, 0.02 * w), rng.normal(0, 0.02 * h)
            sx, sy = rng.uniform(0.95, 1.05, 2)
            preds.append((x + dx, y + dy, x + dx + w * sx, y + dy + h * sy))
    scores = rng.uniform(0, 1, len(preds)).tolist()
    for width in (None, 2.0, 5.0):
        m = _metrics(_boxes(*preds, scores=scores), _boxes(*refs), boundary_width=width)
        assert 0 < m["boundary_ap"] < m["ap"]
        assert m["boundary_iou"] < 1


def test_bad_boundary_width_is_refused():
    ref = _boxes((0, 0, 10, 10))
    for width in (0, -1, float("nan")):
        with pytest.raises(UserInputError, match="boundary width"):
            evaluate(ref, ref, boundary_width=width)


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
    assert "BoundIoU" in table and "BoundAP" in table and "0.1 * sqrt(reference area)" in table
    result = json.loads(out.read_text())
    assert result["classes"]["building"]["precision"] == 0.5
    assert result["classes"]["field"]["ap"] == 1.0
    assert result["classes"]["field"]["boundary_iou"] == pytest.approx(1.0)
    assert result["mean"]["boundary_ap"] == pytest.approx(1.0)
    assert result["boundary_width_m"] is None and "sqrt" in result["boundary_band"]
    assert not list(tmp_path.glob(".*partial"))


def test_cli_json_to_stdout_and_class_options(files, capsys):
    pred, ref = files
    with pytest.raises(SystemExit):
        main(["eval", str(pred), str(ref), "--json", "-", "--classes", "field"])
    result = json.loads(capsys.readouterr().out)
    assert list(result["classes"]) == ["field"] and result["mean"]["f1"] == 1.0


def test_cli_boundary_width_option(files, capsys):
    pred, ref = files
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(pred), str(ref), "--json", "-", "--boundary-width", "2.5"])
    assert exit_info.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["boundary_width_m"] == 2.5 and "d = 2.5 m" in result["boundary_band"]
    assert result["classes"]["field"]["boundary_width_median_m"] == pytest.approx(2.5)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(pred), str(ref), "--boundary-width", "0"])
    assert exit_info.value.code == 2 and "--boundary-width" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--boundary-width METRES" in text and "d = 0.1 * sqrt(area of the reference)" in text


def test_cli_reference_without_classes_names_both_files(files, tmp_path: Path, capsys):
    pred, _ = files  # two classes, so the reference's class cannot be guessed
    ref = tmp_path / "outlines.geojson"
    _boxes((0, 0, 10, 10)).drop(columns="class").to_file(ref)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(pred), str(ref)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"{pred} against {ref}: the reference has no 'class' column" in err
    assert "--ref-class NAME" in err and "\n" not in err


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
