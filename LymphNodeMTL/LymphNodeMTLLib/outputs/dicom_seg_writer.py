"""DICOM Segmentation (SEG) output with highdicom: one BINARY segment per node.

Every node becomes one segment "LN <id>", coded as SNOMED CT 59441001 "Lymph node" in the
category 85756007 "Tissue" (the same terminology the `.seg.nrrd` and the Slicer Logic use, so
Slicer's DICOM import finds the node in its own terminology lists), with the metastasis probability
in the segment description, the node id as tracking id, the display colour of the probability ramp
and an algorithm identification (family "Artificial Intelligence", name "LymphNodeMTL", version =
package version, parameters = model id and weights SHA-256).

Source images. A SEG must reference the images it was derived from and copies their patient,
study and frame of reference. Two cases:

* The CT came from a DICOM series: io/dicom_sources.py matches the headers of that series (those
  the volume reader kept from its one header pass, or read from the folder for a CT loaded
  elsewhere) to the CT array's k axis by their ImagePositionPatient, so frame k of the mask is
  derived from the image that supplied slice k of the CT. The SEG then references those instances and carries their
  patient and study identifiers. Anonymisers sometimes blank the UIDs inside the data set; then
  SOP class/instance UIDs are taken from the file meta header, and an empty Study/Series Instance
  UID (or Frame of Reference UID) is replaced by a UID derived deterministically from the series'
  instance UIDs (the SEG then references a study UID no PACS knows; nothing better exists for
  such a series).
* The CT came from a non-DICOM file (.nrrd, .nii.gz, a phantom): there are no source images, so
  `synthetic_source_datasets` builds a minimal, consistent CT series in memory (headers only, one
  per slice k, never written): ImagePositionPatient of slice k (LPS) = the grid's origin + k times
  its k axis, ImageOrientationPatient = the grid's i (row) and j (column) axes in LPS,
  PixelSpacing, SliceThickness, and new Study, Series, SOP Instance and Frame of Reference UIDs;
  PatientID from the case metadata or "ANONYMOUS", study date and time = now, study ID "LNMTL".
  The SEG's frame positions are thereby exactly the CT grid's voxel planes, for oblique, flipped
  and permuted grids alike; its references point to this synthetic series, which exists nowhere
  else (a viewer shows the SEG in the CT's patient space, but cannot link it to the .nrrd file).

In both cases the mask is handed to highdicom as a [k, j, i] array whose plane k corresponds to
source image k (highdicom takes every frame's position from its source image and sorts the frames
along the slice normal itself), so no slice order is ever guessed.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import numpy as np

from ..core import node_status
from ..core.geometry import LPS_TO_RAS, VolumeGeometry, lps_to_ras_points
from ..core.node_result import NodeResult
from ..core.segment_tags import LYMPH_NODE_TERMINOLOGY
from ..core.version import __version__
from ..io.dicom_series import CT_IMAGE_STORAGE
# re-exported: the Slicer module reads a CT's source headers through this module
from ..io.dicom_sources import read_source_datasets  # noqa: F401
from .output_folder import atomic_output
from .segmentation_writer import probability_color, segment_name

ALGORITHM_NAME = "LymphNodeMTL"
MANUFACTURER = "LymphNodeMTL"
SERIES_DESCRIPTION = "LymphNodeMTL lymph nodes"
SERIES_NUMBER = 901
CONTENT_LABEL = "LYMPH_NODES"  # CS: upper case, digits, space and '_' only, at most 16
DEMO_NOTE = "LymphNodeMTL demo model, not for clinical use"
_LO_MAX = 64  # LO value representation (segment label, tracking id): at most 64 characters


def _terminology_codes():
    """(category, type) as (value, scheme, meaning) triples from the `.seg.nrrd` terminology."""
    fields = LYMPH_NODE_TERMINOLOGY.split("~")

    def triple(field: str):
        scheme, value, meaning = field.split("^")
        return value, scheme, meaning

    return triple(fields[1]), triple(fields[2])


CATEGORY_CODE, TYPE_CODE = _terminology_codes()  # SCT 85756007 Tissue, SCT 59441001 Lymph node


# --- source images ----------------------------------------------------------------------------
def synthetic_source_datasets(geometry: VolumeGeometry, metadata: dict | None = None) -> list:
    """A minimal CT series (headers only) whose image k is plane k of `geometry`.

    Study and frame of reference UIDs come from `metadata` when present (StudyInstanceUID,
    FrameOfReferenceUID), else they are new; PatientID is `metadata["PatientID"]` or "ANONYMOUS".
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pydicom.valuerep import format_number_as_ds

    metadata = metadata or {}
    nk, nj, ni = geometry.shape_kji
    ijk_to_lps = LPS_TO_RAS @ geometry.ijk_to_ras
    spacing = geometry.spacing
    row_axis, column_axis = ijk_to_lps[:3, 0] / spacing[0], ijk_to_lps[:3, 1] / spacing[1]
    normal = np.cross(row_axis, column_axis)
    normal /= np.linalg.norm(normal)
    slice_thickness = abs(float(ijk_to_lps[:3, 2] @ normal))

    def ds_values(values):
        return [format_number_as_ds(float(v)) for v in values]

    now = datetime.datetime.now()
    study_uid = str(metadata.get("StudyInstanceUID") or generate_uid())
    series_uid = generate_uid()
    frame_uid = str(metadata.get("FrameOfReferenceUID") or generate_uid())
    patient_id = str(metadata.get("PatientID") or "ANONYMOUS")
    datasets = []
    for k in range(nk):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.PatientID = patient_id
        ds.PatientName = str(metadata.get("PatientName", ""))
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.AccessionNumber = ""
        ds.StudyID = "LNMTL"  # the synthetic study is made now, by us
        ds.StudyDate = str(metadata.get("StudyDate") or now.strftime("%Y%m%d"))
        ds.StudyTime = now.strftime("%H%M%S")
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.Rows, ds.Columns = nj, ni
        ds.PixelSpacing = ds_values([spacing[1], spacing[0]])  # between rows, between columns
        ds.SliceThickness = format_number_as_ds(slice_thickness)
        ds.ImageOrientationPatient = ds_values([*row_axis, *column_axis])
        ds.ImagePositionPatient = ds_values(ijk_to_lps[:3, 3] + k * ijk_to_lps[:3, 2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        datasets.append(ds)
    return datasets


# --- writing ----------------------------------------------------------------------------------------
def write_dicom_seg(
    path,
    results: list[NodeResult],
    case_image: np.ndarray | None,
    geometry: VolumeGeometry,
    source_datasets: list | None,
    model_id: str,
    model_version: str,
    metadata: dict | None = None,
    clinical_use: bool = False,
) -> Path:
    """Write one BINARY segment per node to a DICOM SEG file; return the path.

    Args:
        path: output file (normally `nodes.dcm`); written under a temporary name, then renamed.
        results: nodes in output order; segment N + 1 is results[N]. Masks must not overlap.
        case_image: the CT array (only its shape is checked; pixels are never copied).
        geometry: the CT's grid; mask plane k is written against source image k.
        source_datasets: the CT's DICOM headers in k order (io/dicom_sources.py), or None for
            a CT from a non-DICOM file (a synthetic series is made, see the module docstring).
        model_id: recorded in every segment's algorithm parameters.
        model_version: the exact model, i.e. the weights' SHA-256; also an algorithm parameter.
        metadata: case identifiers (PatientID, StudyInstanceUID, ...) for a synthetic series.
        clinical_use: False appends "(LymphNodeMTL demo model, not for clinical use)" to every
            segment description.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    path = Path(path)
    if case_image is not None and tuple(np.shape(case_image)) != tuple(geometry.shape_kji):
        raise ValueError("CT image shape and geometry shape differ")
    if source_datasets is None:
        source_datasets = synthetic_source_datasets(geometry, metadata)
    if len(source_datasets) != geometry.shape_kji[0]:
        raise ValueError(
            f"{len(source_datasets)} source images for a CT of {geometry.shape_kji[0]} slices"
        )
    if not results:
        raise ValueError("a DICOM SEG needs at least one node")
    labelmap = _labelmap(results, geometry.shape_kji)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
        version=__version__,
        parameters={"model_id": model_id, "weights_sha256": model_version},
    )
    descriptions = [
        _segment_description(n + 1, r, algorithm, clinical_use) for n, r in enumerate(results)
    ]
    seg = hd.seg.Segmentation(
        source_images=source_datasets,
        pixel_array=labelmap,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=__version__,
        device_serial_number="0",
        content_label=CONTENT_LABEL,
        content_description=_lo(f"LymphNodeMTL {model_id}"),
        series_description=SERIES_DESCRIPTION,
        # a SEG whose nodes are all empty still needs one frame
        omit_empty_frames=bool(labelmap.any()),
    )
    with atomic_output(path, suffix=".dcm") as temporary:
        seg.save_as(temporary)
    return path


def _labelmap(results: list[NodeResult], shape_kji) -> np.ndarray:
    """Node N + 1 painted as value N + 1 into one [k, j, i] array (highdicom's label-map style)."""
    dtype = np.uint8 if len(results) < 256 else np.uint16
    if len(results) >= 65536:
        raise ValueError(f"at most 65535 segments fit in one DICOM SEG, got {len(results)}")
    labelmap = np.zeros(shape_kji, dtype=dtype)
    for value, r in enumerate(results, start=1):
        start, stop = np.asarray(r.bbox_start_kji), np.asarray(r.bbox_stop_kji)
        mask = np.asarray(r.mask, dtype=bool)
        if np.any(start < 0) or np.any(stop > np.asarray(shape_kji)) or mask.shape != tuple(stop - start):
            raise ValueError(f"node {r.node_id}: mask and bounding box disagree or leave the CT grid")
        region = labelmap[r.slices()]
        if np.any(region[mask]):
            raise ValueError(f"the mask of node {r.node_id} overlaps an earlier node's mask")
        region[mask] = value
    return labelmap


def segment_description_text(probability: float, clinical_use: bool, status: str = "ok",
                             agreement: float = float("nan")) -> str:
    """'metastasis probability 0.734 (LymphNodeMTL demo model, not for clinical use)'; a node
    whose status is not ok says so first: 'REVIEW: empty_mask, metastasis probability unknown
    (...)', 'REVIEW: low_agreement (mask agreement 0.62), metastasis probability 0.412 (...)'."""
    value = "unknown" if probability is None or not math.isfinite(probability) else f"{probability:.3f}"
    text = f"metastasis probability {value}"
    if node_status.needs_review(status):
        known = agreement is not None and math.isfinite(agreement)
        text = f"REVIEW: {status}{f' (mask agreement {agreement:.2f})' if known else ''}, {text}"
    return text if clinical_use else f"{text} ({DEMO_NOTE})"


def _segment_description(number: int, result: NodeResult, algorithm, clinical_use: bool):
    import highdicom as hd

    red, green, blue = (255.0 * c for c in probability_color(result.probability))
    region = result.extra.get("anatomic_region_code")  # (value, scheme, meaning) where known
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=_lo(segment_name(result.node_id)),
        segmented_property_category=hd.sr.CodedConcept(*CATEGORY_CODE),
        segmented_property_type=hd.sr.CodedConcept(*TYPE_CODE),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_id=_lo(str(result.node_id)),
        tracking_uid=hd.UID(),
        anatomic_regions=[hd.sr.CodedConcept(*region)] if region else None,
        display_color=hd.color.CIELabColor.from_rgb(red, green, blue),
    )
    description.SegmentDescription = segment_description_text(result.probability, clinical_use,
                                                              result.status, result.mask_agreement)
    return description


def _lo(text: str) -> str:
    """A value for an LO attribute: no backslash, at most 64 characters."""
    return str(text).replace("\\", "/")[:_LO_MAX]
