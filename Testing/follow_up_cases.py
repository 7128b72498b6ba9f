"""Follow-up pairs on disk for tests and benchmarks: a phantom pair's two CTs, the baseline seeds and
the new nodes' seeds as files, the follow-up CT in other encodings, and what a follow-up run's
outputs say of the truth."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from LymphNodeMTLLib.core.case import Seed
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.io.seed_reader import write_markups_json
from LymphNodeMTLLib.io.volume_reader import write_volume
from LymphNodeMTLLib.outputs.segmentation_writer import read_segmentation, segment_mask
from LymphNodeMTLLib.phantoms.real_background import resample_onto
from scipy.spatial.transform import Rotation


def write_pair(folder: Path, pair) -> dict[str, Path]:
    """ct0.nrrd, seeds0.mrk.json, ct1.nrrd and new.mrk.json (the nodes new at follow-up)."""
    # the pair's images are rounded to whole HU below
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ct0": folder / "ct0.nrrd", "seeds0": folder / "seeds0.mrk.json", "ct1": folder / "ct1.nrrd",
             "new": folder / "new.mrk.json"}
    # whole HU, as a scanner stores them: the same values in every file format, DICOM included
    write_volume(paths["ct0"], np.round(pair.baseline.image), pair.baseline.geometry)
    write_volume(paths["ct1"], np.round(pair.follow_up.image), pair.follow_up.geometry)
    write_markups_json(paths["seeds0"], [Seed(n.node_id, n.seed_ras) for n in pair.baseline.nodes])
    write_markups_json(paths["new"], [Seed(n.node_id, n.seed_ras) for n in pair.follow_up.nodes
                                      if n.node_id in pair.new_ids])
    return paths


def flipped(image: np.ndarray, geometry: VolumeGeometry):
    """The same voxels stored with i and k running the other way."""
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    n_i, _, n_k = geometry.shape_kji[::-1]
    flip[0, 3], flip[2, 3] = n_i - 1, n_k - 1
    return np.ascontiguousarray(image[::-1, :, ::-1]), VolumeGeometry(geometry.ijk_to_ras @ flip, geometry.shape_kji)


def oblique(image: np.ndarray, geometry: VolumeGeometry, degrees: float = 12.0):
    """The CT resampled onto a grid turned by `degrees` about an oblique axis through its centre."""
    axis = np.array([0.6, 0.3, 0.74]) / np.linalg.norm([0.6, 0.3, 0.74])
    rotation = Rotation.from_rotvec(np.radians(degrees) * axis).as_matrix()
    mid = (np.asarray(geometry.shape_kji[::-1], float) - 1) / 2
    matrix = geometry.ijk_to_ras.copy()
    centre = matrix[:3, :3] @ mid + matrix[:3, 3]
    matrix[:3, :3] = rotation @ matrix[:3, :3]
    matrix[:3, 3] = centre - matrix[:3, :3] @ mid
    target = VolumeGeometry(matrix, geometry.shape_kji)
    return resample_onto(image, geometry, target), target


def write_dicom_series(folder: Path, image: np.ndarray, geometry: VolumeGeometry) -> Path:
    """One int16 DICOM file per k plane of the CT, each placed by its own position."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    origin, spacing, direction = geometry.lps_terms()
    direction = np.asarray(direction, float).reshape(3, 3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    values = np.round(image).astype(np.int16)
    for k in range(values.shape[0]):
        plane = sitk.GetImageFromArray(values[k:k + 1])
        plane.SetSpacing(spacing)
        plane.SetDirection(tuple(direction.flatten()))
        plane.SetOrigin(tuple(np.asarray(origin) + direction[:, 2] * spacing[2] * k))
        for tag, value in {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                           "0008|0018": f"1.2.826.0.1.3680043.2.1125.27.{k + 1}",
                           "0020|000d": "1.2.826.0.1.3680043.2.1125.28",
                           "0020|000e": "1.2.826.0.1.3680043.2.1125.29", "0020|0013": str(k + 1),
                           "0018|0050": f"{spacing[2]:.3f}"}.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"im{k:03d}.dcm"))
        writer.Execute(plane)
    return folder


def read_table(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "nodes.csv", newline="", encoding="utf-8") as stream:
        return {row["id"]: row for row in csv.DictReader(stream)}


def mask_centres(folder: Path) -> dict[str, np.ndarray | None]:
    """Each segment's centroid (RAS mm) in a results folder's nodes.seg.nrrd; None when empty."""
    labelmap, geometry, segments = read_segmentation(folder / "nodes.seg.nrrd")
    centres = {}
    for segment in segments:
        voxels = np.argwhere(segment_mask(labelmap, segment))
        node_id = segment["tags"]["LymphNodeMTL.SeedId"]
        centres[node_id] = geometry.ijk_to_ras_points(voxels.mean(axis=0)[::-1])[0] if len(voxels) else None
    return centres


def score_against_truth(folder: Path, pair) -> dict:
    """What a follow-up run's outputs say against the pair's truth: per surviving node the centre
    error (mm) and short-axis change error (mm); the vanished nodes' statuses and masks."""
    table, centres = read_table(folder), mask_centres(folder)
    centre_mm, change_error_mm, vanished, missed = {}, {}, {}, []
    for fate in pair.fates:
        row = table[fate.node_id]
        if fate.fate == "vanished":
            vanished[fate.node_id] = (row["status"], centres[fate.node_id] is None)
            continue
        if centres[fate.node_id] is None:
            missed.append(fate.node_id)
            continue
        centre_mm[fate.node_id] = float(np.linalg.norm(centres[fate.node_id] - np.asarray(fate.follow_up_centre_ras)))
        if fate.fate != "new":
            truth = fate.follow_up_short_axis_mm - fate.baseline_short_axis_mm
            change_error_mm[fate.node_id] = abs(float(row["short_axis_change_mm"]) - truth)
    return {"centre_mm": centre_mm, "change_error_mm": change_error_mm, "vanished": vanished, "missed": missed}
