"""Slicer `.seg.nrrd` files: write NodeResults so Slicer opens them unchanged, and read them back.

The file is what Slicer's vtkMRMLSegmentationStorageNode writes for a segmentation whose segments
share one labelmap layer: a 3-D labelmap in the CT's exact grid (label value = segment index + 1)
and NRRD key/value fields `Segmentation_*` (whole segmentation) and `Segment<N>_*` (one segment).
Each segment's tags are the node's (core/segment_tags.py), serialised as Slicer does. The NRRD
writer itself escapes newlines and backslashes in header values.

Also here: the per-segment name, ID and colour, so the Slicer Logic can give segments it creates in
a scene exactly the same ones.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..core.geometry import VolumeGeometry
from ..core.node_result import NodeResult
from ..core.segment_tags import parse_tags, segment_tags, serialize_tags
from .output_folder import atomic_output

LABELMAP_REPRESENTATION = "Binary labelmap"
# Slicer's description of the one conversion parameter we set (kept verbatim for Slicer's GUI).
_REFERENCE_GEOMETRY_PARAMETER = (
    "Reference image geometry",
    "Image geometry description string determining the geometry of the labelmap that is created "
    "in course of conversion. Can be copied from a volume, using the button.",
)
_UNKNOWN_PROBABILITY_COLOR = (0.5, 0.5, 0.5)
_EXTRA_KEY_PREFIX = "LymphNodeMTL_"
# NRRD header keys end at ':=' and lines at a newline; keep extra keys plainly safe.
_HEADER_KEY = re.compile(r"[A-Za-z0-9_.-]+")


# --- per-segment facts (shared with the Slicer Logic) ---------------------------------------------
def segment_name(node_id: str) -> str:
    return f"LN {node_id}"


def segment_id(node_id: str, index: int) -> str:
    """A unique segment ID that is safe in MRML references: index-prefixed, node id sanitised."""
    return f"LN_{index + 1}_" + re.sub(r"[^A-Za-z0-9_.-]", "_", str(node_id))


def probability_color(probability: float) -> tuple[float, float, float]:
    """RGB in [0, 1] on a green -> yellow -> red ramp; grey when the probability is unknown."""
    if probability is None or not math.isfinite(probability):
        return _UNKNOWN_PROBABILITY_COLOR
    p = min(max(float(probability), 0.0), 1.0)
    if p < 0.5:
        return (2.0 * p, 1.0, 0.0)
    return (1.0, 2.0 * (1.0 - p), 0.0)


# --- writing -----------------------------------------------------------------------------------
def write_segmentation(
    path,
    results: list[NodeResult],
    geometry: VolumeGeometry,
    metadata: dict | None = None,
) -> Path:
    """Write one segment per node to a Slicer `.seg.nrrd` in the CT's grid; return the path.

    Args:
        path: output file, normally ending in `.seg.nrrd`.
        results: nodes in output order; segment N gets label value N + 1. Masks must not
            overlap (overlaps are resolved upstream); empty masks still give a segment.
        geometry: the CT's grid; the file has exactly this grid, so Slicer overlays it as is.
        metadata: extra facts for the header, written as `LymphNodeMTL_<key>:=<value>`.

    The file appears only complete: it is written next to `path` under a temporary name and
    renamed over `path` at the end, so an error leaves no partial file (and any old file intact).
    """
    import SimpleITK as sitk  # lazily: keeps importing the Lib cheap

    path = Path(path)
    labelmap = _labelmap(results, geometry)
    image = sitk.GetImageFromArray(labelmap)
    geometry.apply_to_sitk(image)
    header = _segmentation_header(geometry, metadata)
    for index, result in enumerate(results):
        header.update(_segment_header(index, result, geometry))
    for key, value in header.items():
        image.SetMetaData(key, value)
    with atomic_output(path, suffix=".nrrd") as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True, imageIO="NrrdImageIO")
    return path


def _labelmap(results: list[NodeResult], geometry: VolumeGeometry) -> np.ndarray:
    """All masks painted into one labelmap in the CT grid (uint8, or uint16 past 255 nodes)."""
    if len(results) > np.iinfo(np.uint16).max:
        raise ValueError(f"at most 65535 nodes fit in one labelmap, got {len(results)}")
    dtype = np.uint8 if len(results) <= np.iinfo(np.uint8).max else np.uint16
    labelmap = np.zeros(geometry.shape_kji, dtype=dtype)
    for label_value, result in enumerate(results, start=1):
        _check_bbox(result, geometry.shape_kji)
        region = labelmap[result.slices()]
        mask = np.asarray(result.mask, dtype=bool)
        if np.any(region[mask]):
            # One layer cannot hold overlapping segments; writing would silently drop voxels.
            raise ValueError(f"the mask of node {result.node_id} overlaps an earlier node's mask")
        region[mask] = label_value
    return labelmap


def _check_bbox(result: NodeResult, shape_kji) -> None:
    start, stop = np.asarray(result.bbox_start_kji), np.asarray(result.bbox_stop_kji)
    if np.any(start < 0) or np.any(stop > np.asarray(shape_kji)) or np.any(stop < start):
        raise ValueError(f"node {result.node_id}: bounding box lies outside the CT grid")
    if tuple(np.shape(result.mask)) != tuple(stop - start):
        raise ValueError(f"node {result.node_id}: mask shape does not match its bounding box")


def _segmentation_header(geometry: VolumeGeometry, metadata: dict | None) -> dict[str, str]:
    header = {
        "Segmentation_MasterRepresentation": LABELMAP_REPRESENTATION,
        "Segmentation_ContainedRepresentationNames": LABELMAP_REPRESENTATION + "|",
        # The file holds the whole reference grid, so its voxel (0,0,0) is the grid's.
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        "Segmentation_ConversionParameters": _conversion_parameters(geometry),
    }
    for key, value in (metadata or {}).items():
        if not _HEADER_KEY.fullmatch(str(key)):
            raise ValueError(f"metadata key {key!r}: use letters, digits, '_', '.' or '-' only")
        header[_EXTRA_KEY_PREFIX + str(key)] = str(value)
    return header


def _conversion_parameters(geometry: VolumeGeometry) -> str:
    """Slicer's `name|value|description&` list; only the reference geometry is set, so that
    Slicer shows the CT as the segmentation's geometry. Other parameters keep Slicer's defaults."""
    name, description = _REFERENCE_GEOMETRY_PARAMETER
    return f"{name}|{_image_geometry_string(geometry)}|{description}&"


def _image_geometry_string(geometry: VolumeGeometry) -> str:
    """vtkSegmentationConverter::SerializeImageGeometry: IJK->RAS row by row, then the extent."""
    matrix = ";".join(repr(float(v)) for v in geometry.ijk_to_ras.flatten())
    return f"{matrix};{_extent_string(geometry).replace(' ', ';')};"


def _extent_string(geometry: VolumeGeometry) -> str:
    """The whole grid as a VTK extent 'i0 i1 j0 j1 k0 k1' (inclusive)."""
    nk, nj, ni = geometry.shape_kji
    return f"0 {ni - 1} 0 {nj - 1} 0 {nk - 1}"


def _segment_header(index: int, result: NodeResult, geometry: VolumeGeometry) -> dict[str, str]:
    prefix = f"Segment{index}_"
    color = probability_color(result.probability)
    return {
        prefix + "ID": segment_id(result.node_id, index),
        prefix + "Name": segment_name(result.node_id),
        prefix + "NameAutoGenerated": "0",
        prefix + "Color": " ".join(f"{c:.6g}" for c in color),
        prefix + "ColorAutoGenerated": "0",
        # Segments of one layer share one labelmap and Slicer writes the layer's extent for each;
        # some Slicer readers build the layer from the first segment's extent. So every segment,
        # empty or not, gets the layer's (whole-grid) extent.
        prefix + "Extent": _extent_string(geometry),
        prefix + "LabelValue": str(index + 1),
        prefix + "Layer": "0",
        prefix + "Tags": serialize_tags(segment_tags(result)),
    }


# --- reading -----------------------------------------------------------------------------------
def read_segmentation(path) -> tuple[np.ndarray, VolumeGeometry, list[dict]]:
    """Read a `.seg.nrrd` (ours or one saved by Slicer after editing).

    Returns:
        labelmap: [k, j, i] integer array; for a file with several layers (Slicer writes those
            when segments overlap) [k, j, i, layer]. Use `segment_mask` to get one segment.
        geometry: the file's grid. Ours is the CT grid; Slicer may save a larger or cropped grid.
        segments: one dict per segment, in file order, with id, name, label_value, layer, color,
            extent (VTK 'i0 i1 j0 j1 k0 k1' string) and tags (dict).
    """
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path), imageIO="NrrdImageIO")
    header = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}
    labelmap = sitk.GetArrayFromImage(image)
    geometry = VolumeGeometry.from_sitk(image)
    return labelmap, geometry, _segments_from_header(header)


def _segments_from_header(header: dict[str, str]) -> list[dict]:
    segments = []
    while f"Segment{len(segments)}_ID" in header:
        segments.append(_segment_from_header(header, len(segments)))
    return segments


def _segment_from_header(header: dict[str, str], index: int) -> dict:
    """One segment's fields, with Slicer's defaults where a field is missing."""
    prefix = f"Segment{index}_"
    field = {key[len(prefix) :]: value for key, value in header.items() if key.startswith(prefix)}
    return {
        "id": field["ID"],
        "name": field.get("Name", field["ID"]),
        "label_value": int(field.get("LabelValue", "1")),
        "layer": int(field.get("Layer", str(index))),
        "color": tuple(float(c) for c in field.get("Color", "0.5 0.5 0.5").split()),
        "extent": field.get("Extent", ""),
        "tags": parse_tags(field.get("Tags", "")),
    }


def segment_mask(labelmap: np.ndarray, segment: dict) -> np.ndarray:
    """One segment's boolean mask from `read_segmentation`'s labelmap and segment dict."""
    layer = labelmap if labelmap.ndim == 3 else labelmap[..., segment["layer"]]
    return layer == segment["label_value"]
