"""Case report: report.png and a self-contained report.html, one thumbnail row per node sorted by
probability, a header naming the model (and "not for clinical use"), radiological orientation of
the resampled views on any grid, and drawn RECIST axes that agree with measurements.py."""

import base64
import io
import re

import numpy as np
import pytest
from geometry_cases import (
    SPHERE_CENTRE_RAS,
    other_lattice_encodings,
    same_lattice_encodings,
    voxel_centres_ras,
)
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.core.case import Case, Seed
from LymphNodeMTLLib.core.measurements import measure_node
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.io.seed_reader import write_markups_json
from LymphNodeMTLLib.io.volume_reader import write_volume
from LymphNodeMTLLib.outputs.case_report import (
    DPI,
    NOT_CLINICAL,
    ROW_HEIGHT_IN,
    header_text,
    node_views,
    recist_axes,
    report_order,
    write_case_report,
)
from PIL import Image

ENCODINGS = {**same_lattice_encodings(), **other_lattice_encodings()}
# Node centres relative to the lattice centre (RAS mm), radii and probabilities.
NODES = [("a", (-9.0, 0.0, 0.0), 4.0, 0.21), ("b", (8.0, 6.0, 0.0), 5.0, 0.93),
         ("c", (0.0, -9.0, 5.0), 3.0, float("nan")), ("d", (5.0, -6.0, -8.0), 3.5, 0.55)]


def node_case(geometry, nodes=NODES):
    """A CT of fat with spherical 'nodes' (id, RAS offset from the lattice centre, radius mm,
    probability), and their measured NodeResults."""
    centres = voxel_centres_ras(geometry)
    image = np.full(geometry.shape_kji, -100.0, dtype=np.float32)
    results = []
    for node_id, offset, radius, probability in nodes:
        centre = SPHERE_CENTRE_RAS + np.asarray(offset)
        mask = np.linalg.norm(centres - centre, axis=-1) <= radius
        image[mask] = 45.0
        lo, hi = np.argwhere(mask).min(axis=0), np.argwhere(mask).max(axis=0) + 1
        r = NodeResult(node_id, tuple(centre), tuple(lo), tuple(hi),
                       mask[tuple(slice(a, b) for a, b in zip(lo, hi))].copy(), probability=probability)
        measure_node(r, image, geometry)
        results.append(r)
    seeds = [Seed(r.node_id, r.seed_ras) for r in results]
    return Case(image, geometry, seeds), results


def test_report_files_rows_and_header(tmp_path):
    case, results = node_case(ENCODINGS["lps_axial"])
    empty = NodeResult("e", tuple(SPHERE_CENTRE_RAS), (3, 3, 3), (4, 4, 4), np.zeros((1, 1, 1), bool),
                       probability=0.4)
    results.append(empty)
    png, page = write_case_report(tmp_path, case, results, "phantom-demo-7", clinical_use=False)
    assert png == tmp_path / "report.png" and page == tmp_path / "report.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.png"]  # no leftovers

    expected_order = ["b", "d", "e", "a", "c"]  # by probability, highest first; NaN last
    assert [r.node_id for r in report_order(results)] == expected_order
    text = page.read_text(encoding="utf-8")
    assert re.findall(r'<tr class="node" data-node-id="([^"]*)"', text) == expected_order
    header = header_text("phantom-demo-7", False, 5)
    assert "phantom-demo-7" in header and NOT_CLINICAL in header
    assert f"<h1 class=\"not-clinical\">{header}</h1>" in text

    # Self-contained: every image is an embedded PNG, nothing is fetched from elsewhere.
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 5
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        row = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert row.size[1] == int(ROW_HEIGHT_IN * DPI)
    assert not re.search(r"<link|<script|url\(|href=", text)

    # The PNG: a header strip plus one row per node.
    sheet = Image.open(png)
    assert sheet.format == "PNG"
    header_px = sheet.size[1] - 5 * int(ROW_HEIGHT_IN * DPI)
    assert 20 <= header_px <= 80


def test_clinical_model_header_has_no_warning(tmp_path):
    case, results = node_case(ENCODINGS["thick_slices"], NODES[:1])
    _, page = write_case_report(tmp_path, case, results, "clinical-model", clinical_use=True)
    text = page.read_text(encoding="utf-8")
    assert "clinical-model" in text and NOT_CLINICAL not in text
    assert "1 node," in header_text("m", True, 1)


@pytest.mark.parametrize("name", ["lps_axial", "ras_axial", "permuted_sagittal", "oblique", "thick_slices"])
def test_drawn_axes_agree_with_measurements(name):
    case, results = node_case(ENCODINGS[name], NODES[:2])
    for r in results:
        axes = recist_axes(r)
        assert axes.short_mm == pytest.approx(r.short_axis_mm, abs=1e-6)
        assert axes.long_mm <= r.long_axis_mm + 1e-6
        assert axes.long_mm >= axes.short_mm - 1e-6
        assert axes.slice_s_mm == pytest.approx(r.extra["short_axis_slice_s_mm"], abs=1e-6)
        # both axes lie in that axial plane and cross near the node's centre
        assert np.allclose(axes.long_ras[:, 2], axes.slice_s_mm)
        assert np.allclose(axes.short_ras[:, 2], axes.slice_s_mm)
        middle = axes.long_ras.mean(axis=0)[:2]
        assert np.linalg.norm(middle - np.asarray(r.seed_ras)[:2]) < 1.5
    assert recist_axes(NodeResult("e", (0, 0, 0), (0, 0, 0), (1, 1, 1), np.zeros((1, 1, 1), bool))) is None


@pytest.mark.parametrize("name", ["lps_axial", "ras_axial", "flipped_k", "permuted_sagittal", "oblique"])
def test_views_are_in_radiological_orientation(name):
    """Whatever the grid: a marker to the patient's right and anterior of a node shows up-left in
    the axial view (right on the image left, anterior up), one right and superior up-left in the
    coronal view, one anterior and superior up-left in the sagittal view (anterior on the left)."""
    markers = {"axial": (6.0, 6.0, 0.0), "coronal": (6.0, 0.0, 6.0), "sagittal": (0.0, 6.0, 6.0)}
    nodes = [("n", (0.0, 0.0, 0.0), 3.0, 0.5)] + [(v, offset, 2.5, 0.5) for v, offset in markers.items()]
    case, results = node_case(ENCODINGS[name], nodes)
    for view in node_views(case, results[0]):
        step = 2 * view.half_width_mm / view.ct.shape[0]
        centre_px = (np.asarray(view.ct.shape) - 1) / 2
        bright = np.argwhere(view.ct > 0)
        offset_mm = (bright - centre_px) * step
        marker = bright[np.linalg.norm(offset_mm, axis=1) > 5.0]  # outside the 3 mm node
        assert len(marker) > 10, f"{name}/{view.name}: the in-plane marker is missing"
        row, col = (marker.mean(axis=0) - centre_px) * step  # mm down, mm right
        assert row == pytest.approx(-6.0, abs=1.0), f"{name}/{view.name}: marker not above"
        assert col == pytest.approx(-6.0, abs=1.0), f"{name}/{view.name}: marker not left"


def test_predict_report_flag(tmp_path, capsys):
    case, results = node_case(ENCODINGS["lps_axial"], NODES[:2])
    ct, seeds, out = tmp_path / "ct.nrrd", tmp_path / "seeds.mrk.json", tmp_path / "out"
    write_volume(ct, case.image, case.geometry)
    write_markups_json(seeds, case.seeds)
    code = main(["predict", "--volume", str(ct), "--seeds", str(seeds), "--out", str(out),
                 "--device", "cpu", "--report"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "nodes.csv", "nodes.seg.nrrd", "report.html", "report.png", "run.json"]
    assert "report.html" in captured.out
    # a second run without --overwrite refuses, naming the report among the existing files
    code = main(["predict", "--volume", str(ct), "--seeds", str(seeds), "--out", str(out),
                 "--device", "cpu", "--report"])
    assert code == 2 and "report.png" in capsys.readouterr().err
    # overwriting without --report removes the old report: it would describe other results
    code = main(["predict", "--volume", str(ct), "--seeds", str(seeds), "--out", str(out),
                 "--device", "cpu", "--overwrite"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["nodes.csv", "nodes.seg.nrrd", "run.json"]


def test_every_text_line_of_a_row_stays_inside_it():
    """The last line of a node's text (mask agreement, field of view) ends above the row's bottom
    edge: neither cut off nor touching the next node's name."""
    from LymphNodeMTLLib.outputs.case_report import _render_row

    geometry = next(iter(ENCODINGS.values()))
    case, results = node_case(geometry)
    result = results[0]
    result.mask_agreement, result.field_of_view_mm = 0.93, 48.0
    row = _render_row(case, result)
    text_column = row[:, int(3 * ROW_HEIGHT_IN * DPI) + 4:]
    inked = np.flatnonzero((text_column < 200).any(axis=(1, 2)))
    assert row.shape[0] - 1 - inked.max() >= 4  # a margin of white pixel rows at the bottom
