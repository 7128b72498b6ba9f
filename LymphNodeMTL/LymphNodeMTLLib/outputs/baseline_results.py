"""A baseline run's results folder read back: each node's mask (as the radiologist left it, edited
or not), seed, status and probability, on the baseline CT's grid.

The masks come from nodes.seg.nrrd (what predict wrote, or the same file saved by Slicer after
corrections, possibly on a cropped or larger grid: resampled onto the CT's grid by nearest
neighbour). Sizes are measured again on the baseline CT, so a corrected mask counts as corrected;
results whose nodes' mean HU, measured again, is far from what they say were made on another CT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.geometry import VolumeGeometry
from ..core.measurements import measure_node
from ..core.node_result import NodeResult
from ..core.segment_tags import read_segment_tags
from .segmentation_writer import read_segmentation, segment_mask

SEGMENTATION_FILE = "nodes.seg.nrrd"
# the nodes' mean HU as written and as measured again under the same masks: equal on the CT the
# results were made on (a corrected mask moves it a little), far apart on another CT
MAX_MEAN_HU_DIFFERENCE = 25.0


def read_baseline_results(folder, image: np.ndarray, geometry: VolumeGeometry) -> list[NodeResult]:
    """The baseline nodes in file order, measured on `image` (the baseline CT)."""
    folder = Path(folder)
    path = folder / SEGMENTATION_FILE
    if not folder.is_dir():
        raise InputError(f"--baseline-results {folder} is not a folder; give the folder predict wrote for "
                         "the baseline CT")
    if not path.is_file():
        raise InputError(f"{folder} holds no {SEGMENTATION_FILE}; run predict on the baseline CT into it first")
    try:
        labelmap, seg_geometry, segments = read_segmentation(path)
    except (RuntimeError, KeyError, ValueError) as e:
        raise InputError(f"{path} cannot be read as a segmentation ({str(e).splitlines()[0][:80]}); "
                         "give the file predict or Slicer wrote") from None
    nodes = [s for s in segments if read_segment_tags(s["tags"]).node_id]
    if not nodes:
        raise InputError(f"{path} holds no lymph-node segment of this tool; give the results predict wrote")
    if not seg_geometry.same_grid(geometry):
        labelmap = _onto_grid(labelmap, seg_geometry, geometry)
    results, seen, hu_differences = [], set(), []
    for segment in nodes:
        tags = read_segment_tags(segment["tags"])
        if tags.node_id in seen:
            raise InputError(f"{path} holds node {tags.node_id} twice; keep one segment per node")
        seen.add(tags.node_id)
        mask = segment_mask(labelmap, segment)
        if mask.any():
            where = np.argwhere(mask)
            start, stop = where.min(axis=0), where.max(axis=0) + 1
        else:
            start = stop = np.zeros(3, dtype=int)
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        seed = tags.seed_ras
        if seed is None:
            if not mask.any():
                continue  # neither a seed nor a mask: nothing to carry
            seed = tuple(geometry.ijk_to_ras_points(where.mean(axis=0)[::-1])[0])
        result = tags.node_result(mask[box].copy(), tuple(int(v) for v in start), seed)
        written_hu = result.mean_hu
        measure_node(result, image, geometry)
        if np.isfinite(written_hu) and np.isfinite(result.mean_hu):
            hu_differences.append(abs(result.mean_hu - written_hu))
        results.append(result)
    if hu_differences and float(np.median(hu_differences)) > MAX_MEAN_HU_DIFFERENCE:
        raise InputError(f"the results in {folder} were not made on this baseline CT (the nodes' mean HU differ "
                         f"by {np.median(hu_differences):.0f} HU from what the results say); give the CT they "
                         "were made on as --baseline")
    return results


def _onto_grid(labelmap: np.ndarray, source: VolumeGeometry, target: VolumeGeometry) -> np.ndarray:
    import SimpleITK as sitk

    layers = labelmap[..., None] if labelmap.ndim == 3 else labelmap
    out = []
    for n in range(layers.shape[-1]):
        image = sitk.GetImageFromArray(np.ascontiguousarray(layers[..., n]))
        source.apply_to_sitk(image)
        reference = sitk.Image([int(v) for v in target.shape_kji[::-1]], image.GetPixelID())
        target.apply_to_sitk(reference)
        out.append(sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(),
                                                        sitk.sitkNearestNeighbor, 0)))
    return out[0] if labelmap.ndim == 3 else np.stack(out, axis=-1)
