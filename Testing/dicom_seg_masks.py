"""A DICOM SEG read back onto a CT grid for tests: each segment's mask, placed frame by frame by
its own position, to compare with what outputs/dicom_seg_writer.py was given."""

from __future__ import annotations

import numpy as np
from LymphNodeMTLLib.core.geometry import VolumeGeometry, lps_to_ras_points


def read_dicom_seg_masks(path, geometry: VolumeGeometry) -> dict[str, np.ndarray]:
    """Segment label -> boolean [k, j, i] mask on the CT grid `geometry`.

    Every frame is placed by its own ImagePositionPatient and the shared orientation and pixel
    spacing, so frames in any order, omitted empty frames and any grid orientation are handled.
    Raises ValueError when a frame does not lie on the grid's voxel lattice.
    """
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    numbers = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    masks = {label: np.zeros(geometry.shape_kji, dtype=bool) for label in numbers.values()}
    shared = seg.SharedFunctionalGroupsSequence[0]
    ras_to_ijk = geometry.ras_to_ijk[:3, :3]
    shape = np.asarray(geometry.shape_kji[::-1])  # (i, j, k) sizes
    for index, frame_item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        orientation = np.array(_frame_attribute(frame_item, shared, "PlaneOrientationSequence",
                                                "ImageOrientationPatient"), dtype=float)
        row_spacing, column_spacing = (float(v) for v in _frame_attribute(
            frame_item, shared, "PixelMeasuresSequence", "PixelSpacing"))
        position = np.array(frame_item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        number = int(frame_item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        # Voxel (i, j, k) of the frame's first pixel, and the voxel steps of one column (along the
        # row cosine, by the column spacing) and one row (along the column cosine, by the row
        # spacing). On the CT grid all three are whole numbers.
        origin = geometry.ras_to_ijk_points(lps_to_ras_points(position))[0]
        column_step = ras_to_ijk @ lps_to_ras_points(orientation[:3] * column_spacing)[0]
        row_step = ras_to_ijk @ lps_to_ras_points(orientation[3:] * row_spacing)[0]
        lattice = np.stack([origin, column_step, row_step])
        if np.abs(lattice - np.rint(lattice)).max() > 0.05:
            raise ValueError(f"frame {index + 1} of {path} is not on the CT's voxel grid")
        origin, column_step, row_step = np.rint(lattice).astype(np.int64)
        rows, columns = np.nonzero(np.asarray(seg.get_stored_frame(index + 1)))
        voxel = origin + rows[:, None] * row_step + columns[:, None] * column_step
        if np.any(voxel < 0) or np.any(voxel >= shape):
            raise ValueError(f"frame {index + 1} of {path} has pixels outside the CT grid")
        masks[numbers[number]][voxel[:, 2], voxel[:, 1], voxel[:, 0]] = True
    return masks


def _frame_attribute(frame_item, shared, sequence: str, keyword: str):
    """A functional-group value from the frame's own groups, else from the shared ones."""
    for group in (frame_item, shared):
        if sequence in group:
            return getattr(group[sequence].value[0], keyword)
    raise ValueError(f"the DICOM SEG has no {sequence}")
