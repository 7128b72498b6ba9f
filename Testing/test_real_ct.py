"""Real CT from ../shared/data/ct: loads (files and the DICOM series) and predict runs on it with
hand-picked seeds. Skipped where ../shared is absent."""

from pathlib import Path

import numpy as np
import pytest
from LymphNodeMTLLib.commands.predict import predict_to_folder
from LymphNodeMTLLib.core import node_status
from LymphNodeMTLLib.core.case import Case, Seed
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.inference.engine import NodeEngine
from LymphNodeMTLLib.io.volume_reader import read_volume
from LymphNodeMTLLib.outputs.segmentation_writer import read_segmentation
from seed_csv import write_seeds_csv

SHARED_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"


def shared(name: str) -> Path:
    path = SHARED_CT / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data/ct not available here)")
    return path


@pytest.fixture(scope="module")
def engine():
    return NodeEngine(device="cpu")


def _centre_ras(path):
    image, geometry, _ = read_volume(path)
    centre = (np.asarray(geometry.shape_kji[::-1]) - 1) / 2.0
    return geometry.ijk_to_ras_points(centre)[0]


@pytest.mark.parametrize("name", ["chest_noncontrast_lung1.nrrd", "mediastinum_contrast_crop.nii.gz",
                                  "dicom_abdomen_series"])
def test_predict_runs_on_real_ct(name, tmp_path, engine):
    path = shared(name)
    centre = _centre_ras(path)
    seeds = tmp_path / "seeds.csv"
    write_seeds_csv(seeds, [Seed("a", tuple(centre)), Seed("b", tuple(centre + [15.0, -10.0, 0.0]))])
    results = predict_to_folder(path, seeds, tmp_path / "out", device="cpu", engine=engine)
    assert [r.node_id for r in results] == ["a", "b"]
    for r in results:
        # a seed at the CT's centre may not be on a node: then its status says so, with no probability
        assert r.status in node_status.ALL
        if r.status in node_status.HAS_USABLE_MASK:
            assert 0.0 <= r.probability <= 1.0
        else:
            assert np.isnan(r.probability) and 0.0 <= r.network_probability <= 1.0
        assert r.volume_mm3 >= 0.0
    labelmap, geometry, segments = read_segmentation(tmp_path / "out" / "nodes.seg.nrrd")
    _, ct_geometry, _ = read_volume(path)
    assert geometry.same_grid(ct_geometry, tol=1e-4)
    assert [s["name"] for s in segments] == ["LN a", "LN b"]
    for r, seg in zip(results, segments):
        assert int((labelmap == seg["label_value"]).sum()) == int(r.mask.sum())


def test_reclassify_real_lesion_from_its_label(engine):
    """The lung1 lesion label stands in for a radiologist-drawn mask: re-classification uses it
    unchanged and gives a probability."""
    image, geometry, _ = read_volume(shared("chest_noncontrast_lung1.nrrd"))
    label, label_geometry, _ = read_volume(shared("chest_noncontrast_lung1_lesion.nrrd"))
    assert label_geometry.same_grid(geometry, tol=1e-4)
    mask = label > 0
    idx = np.argwhere(mask)
    start, stop = idx.min(0), idx.max(0) + 1
    centre = geometry.ijk_to_ras_points(idx.mean(0)[::-1])[0]
    given = NodeResult("lesion", tuple(centre), tuple(start), tuple(stop),
                       mask[tuple(slice(a, b) for a, b in zip(start, stop))])
    case = Case(image, geometry, [Seed("lesion", tuple(centre))])
    (updated,) = engine.classify_masks(case, [given])
    np.testing.assert_array_equal(updated.mask, given.mask)
    assert 0.0 <= updated.probability <= 1.0
    assert updated.volume_mm3 == pytest.approx(mask.sum() * geometry.voxel_volume_mm3)
    assert updated.short_axis_mm > 0 and updated.long_axis_mm >= updated.short_axis_mm


# --- input checks accept real CT ------------------------------------------------------------------
REAL_LESIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_lesions"


@pytest.mark.parametrize("name", ["chest_noncontrast_lung1.nrrd", "mediastinum_contrast_crop.nii.gz",
                                  "dicom_abdomen_series"])
def test_real_ct_passes_integrity_and_plausibility(name):
    from LymphNodeMTLLib.core.ct_plausibility import check_ct_plausibility

    image, geometry, metadata = read_volume(shared(name))  # file integrity is checked on the way
    assert check_ct_plausibility(image, geometry, metadata.get("Modality"), name, warn=pytest.fail) is image


def test_a_real_lesion_mask_is_refused_as_a_ct():
    from LymphNodeMTLLib.core.ct_plausibility import check_ct_plausibility
    from LymphNodeMTLLib.core.errors import InputError

    image, geometry, _ = read_volume(shared("chest_noncontrast_lung1_lesion.nrrd"))
    with pytest.raises(InputError, match="label map or segmentation"):
        check_ct_plausibility(image, geometry, name="lesion")


def _real_lesion_cases():
    return sorted(p.parent.name for p in REAL_LESIONS.glob("*/ct.nrrd")) or ["(absent)"]


@pytest.mark.parametrize("case", _real_lesion_cases())
def test_window_rebuilt_real_lesion_cts_pass_the_input_checks(case):
    """CTs rebuilt from 8-bit windowed images (everything below the window reads as -1000 HU)
    are still CT: accepted whole, with their seeds, by the same checks predict runs."""
    folder = REAL_LESIONS / case
    if not (folder / "ct.nrrd").exists():
        pytest.skip(f"{REAL_LESIONS} is absent")
    from LymphNodeMTLLib.io.seed_reader import read_seeds

    image, geometry, metadata = read_volume(folder / "ct.nrrd")
    assert image.min() == -1000 and len(np.unique(image)) <= 256
    case_ = Case(image, geometry, read_seeds(folder / "seeds.csv"), metadata)
    warnings = []
    case_.validate("ct.nrrd", warnings.append)
    assert warnings == [] and case_.image is image
