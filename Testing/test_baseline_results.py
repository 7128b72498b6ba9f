"""A baseline run's nodes.seg.nrrd read back for a follow-up: the masks as saved (on the CT's grid or,
as Slicer may save them, on a cropped one), re-measured on the baseline CT; unusable folders refused."""

import numpy as np
import pytest
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.outputs.baseline_results import read_baseline_results
from LymphNodeMTLLib.outputs.segmentation_writer import write_segmentation

GEOMETRY = VolumeGeometry(np.diag([0.8, 0.8, 2.0, 1.0]), (20, 60, 60))


def _ball(centre_kji, radius_mm):
    k, j, i = np.indices(GEOMETRY.shape_kji)
    spacing = GEOMETRY.spacing[::-1]
    return ((k - centre_kji[0]) * spacing[0]) ** 2 + ((j - centre_kji[1]) * spacing[1]) ** 2 + \
        ((i - centre_kji[2]) * spacing[2]) ** 2 <= radius_mm ** 2


def _result(node_id, mask, offset=(0, 0, 0)):
    where = np.argwhere(mask)
    start, stop = where.min(axis=0), where.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    seed = tuple(GEOMETRY.ijk_to_ras_points(where.mean(axis=0)[::-1])[0])
    return NodeResult(node_id, seed, tuple(int(v) - o for v, o in zip(start, offset)),
                      tuple(int(v) - o for v, o in zip(stop, offset)), mask[box].copy(), probability=0.7)


def test_the_masks_come_back_measured_also_from_a_cropped_grid(tmp_path):
    image = np.full(GEOMETRY.shape_kji, -100.0, dtype=np.float32)
    masks = {"4R": _ball((10, 20, 20), 6.0), "7": _ball((10, 40, 42), 4.0)}
    for mask in masks.values():
        image[mask] = 45.0
    full, cropped = tmp_path / "full", tmp_path / "cropped"
    full.mkdir()
    cropped.mkdir()
    write_segmentation(full / "nodes.seg.nrrd", [_result(k, m) for k, m in masks.items()], GEOMETRY)
    start, stop = (2, 8, 8), (18, 52, 54)  # Slicer saves a segmentation on its extent
    sub = GEOMETRY.crop(start, stop)
    write_segmentation(cropped / "nodes.seg.nrrd", [_result(k, m, start) for k, m in masks.items()], sub)
    for folder in (full, cropped):
        nodes = read_baseline_results(folder, image, GEOMETRY)
        assert [n.node_id for n in nodes] == list(masks)
        for node in nodes:
            assert np.array_equal(node.full_mask(GEOMETRY.shape_kji), masks[node.node_id])
            assert node.short_axis_mm > 0 and node.probability == pytest.approx(0.7)
        assert nodes[0].short_axis_mm == pytest.approx(12.0, abs=1.7)


def test_results_made_on_another_ct_are_refused(tmp_path):
    image = np.full(GEOMETRY.shape_kji, -100.0, dtype=np.float32)
    mask = _ball((10, 30, 30), 6.0)
    image[mask] = 45.0
    result = _result("1", mask)
    result.mean_hu = 45.0  # as predict measured it on `image`
    write_segmentation(tmp_path / "nodes.seg.nrrd", [result], GEOMETRY)
    assert read_baseline_results(tmp_path, image, GEOMETRY)[0].mean_hu == pytest.approx(45.0)
    other = np.full(GEOMETRY.shape_kji, -100.0, dtype=np.float32)  # no node where the mask lies
    with pytest.raises(InputError, match="were not made on this baseline CT"):
        read_baseline_results(tmp_path, other, GEOMETRY)


def test_a_folder_without_results_is_refused(tmp_path):
    image = np.zeros(GEOMETRY.shape_kji, dtype=np.float32)
    with pytest.raises(InputError, match="holds no nodes.seg.nrrd"):
        read_baseline_results(tmp_path, image, GEOMETRY)
    with pytest.raises(InputError, match="is not a folder"):
        read_baseline_results(tmp_path / "missing", image, GEOMETRY)
