"""The scanner of the spec's world and the wide world: a Gaussian blur of physical width and added
noise; a real CT keeps its own acquisition."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.geometry import VolumeGeometry
from .tissue_scene import TissueScene


def blur_mm(volume: np.ndarray, geometry: VolumeGeometry, sigma_mm: float) -> np.ndarray:
    """Gaussian blur of `sigma_mm` (physical) along every axis of the grid."""
    return ndimage.gaussian_filter(volume, sigma_mm / geometry.spacing[::-1], truncate=3.0)


def scanned_image(scene: TissueScene, blur_sigma_mm: float, noise_hu: np.ndarray) -> np.ndarray:
    """The CT the scanner gives of `scene`, with `noise_hu` added.

    A synthetic scene is blurred whole. A real CT (`scene.original`) stays as acquired: only what the
    nodes changed is blurred, which blurring's linearity allows (blur(original + change) = original
    blurred + blur(change)), so the nodes' edges are blurred as a scanner would blur them; the caller
    confines `noise_hu` to the nodes, the CT keeping its own noise.
    """
    if scene.original is None:
        return blur_mm(scene.hu, scene.geometry, blur_sigma_mm) + noise_hu
    change = blur_mm(scene.hu - scene.original, scene.geometry, blur_sigma_mm)
    return scene.original + change + noise_hu
