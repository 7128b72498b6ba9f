"""The CT as the module sends it to the server: one copy of the voxels per unchanged volume, and
its content hash (the server's name for it) computed once per CT and geometry, so repeated runs and
every refinement click on one CT send and hash one array, once; and where its voxels lie (IJK -> RAS)."""

import numpy as np
import slicer
import vtk
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.server import protocol
from LymphNodeMTLLib.server.job_steps import VolumePayload


class VolumeCache:
    def __init__(self):
        self._image = (None, None)  # (volume key, copy)
        self._payload = (None, None)  # (volume key and geometry, VolumePayload)

    @staticmethod
    def volumeKey(volumeNode):
        imageData = volumeNode.GetImageData()
        scalars = imageData.GetPointData().GetScalars()
        return (volumeNode.GetID(), imageData.GetMTime(), scalars.GetMTime() if scalars else 0,
                imageData.GetDimensions())

    def image(self, volumeNode) -> np.ndarray:
        """A copy of the voxels in a sample type the server takes (the CT's own when it can), made
        again only when the volume changed."""
        key = self.volumeKey(volumeNode)
        if self._image[0] != key:
            self._image = (None, None)  # release the old copy first
            voxels = slicer.util.arrayFromVolume(volumeNode)
            dtype = voxels.dtype if voxels.dtype.name in protocol.DTYPES else np.float32
            self._image = (key, np.array(voxels, dtype=dtype))
        return self._image[1]

    def payload(self, case) -> VolumePayload:
        """The Case's CT as the server names it."""
        key = (self._image[0], case.geometry.ijk_to_ras.tobytes())
        if self._payload[0] != key or self._payload[1].image is not case.image:
            self._payload = (key, VolumePayload(case.image, case.geometry.ijk_to_ras))
        return self._payload[1]


def ijkToLocal(volumeNode) -> np.ndarray:
    """IJK -> RAS of the volume itself (its own grid, no parent transform)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def ijkToWorld(volumeNode) -> np.ndarray:
    """IJK -> world RAS: the volume's matrix under its (linear) parent transforms."""
    ijkToRas = ijkToLocal(volumeNode)
    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is not None:
        if not transformNode.IsTransformToWorldLinear():
            raise InputError(f"the CT '{volumeNode.GetName()}' is under a non-linear transform; "
                             "harden the transform first (Data module, right-click, Harden transform)")
        toWorld = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToWorld(toWorld)
        ijkToRas = slicer.util.arrayFromVTKMatrix(toWorld) @ ijkToRas
    return ijkToRas
