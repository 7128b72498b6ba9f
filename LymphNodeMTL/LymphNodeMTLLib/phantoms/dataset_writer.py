"""Write phantom cases to disk in the training-manifest format that real hospital data also uses.

Layout (paths in the manifest are relative to its folder):
    manifest.csv              case_id,image,nodes,label_map
    <case_id>/image.nrrd      int16 HU, geometry from VolumeGeometry (LPS on disk)
    <case_id>/label_map.nrrd  int16, node mask values, 0 background
    <case_id>/nodes.csv       id,r,a,s,label,mask_value,soft_label,<attributes>  (the seed in RAS mm;
                              soft_label = P; attributes = the visible latent features)
    <case_id>/truth.csv       id, centre and seed RAS, every latent feature, P, label, mask_value
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.geometry import VolumeGeometry
from .case_generator import generate_phantom_case
from .features import FEATURE_NAMES
from .phantom_case import PhantomCase

MANIFEST_COLUMNS = ("case_id", "image", "nodes", "label_map")
# the nodes CSV carries what a training manifest can hold: the seed, the label, P as the soft
# label and the latent features the image shows as node attributes (node_attributes.py). Margin
# irregularity and heterogeneity stay in truth.csv only: under the spec's noise they are all but
# invisible (texture SD about 2 HU), and as refit targets they cost AUC (5-fold CV on 3318 nodes:
# 0.8225 with all six, 0.8242 with these four).
PHANTOM_ATTRIBUTES = ("short_axis_mm", "axis_ratio", "necrosis_fraction", "fatty_hilum")
NODES_COLUMNS = ("id", "r", "a", "s", "label", "mask_value", "soft_label") + PHANTOM_ATTRIBUTES


def phantom_attributes(features) -> dict:
    """The node attributes a phantom node's nodes-CSV row carries, by name (NodeFeatures in)."""
    return {name: value for name, value in features.as_dict().items() if name in PHANTOM_ATTRIBUTES}
TRUTH_COLUMNS = (
    ("id", "centre_r", "centre_a", "centre_s", "seed_r", "seed_a", "seed_s")
    + FEATURE_NAMES
    + ("probability", "label", "mask_value")
)
HU_RANGE = (-1024, 3071)  # what a CT's int16 storage holds in practice


def write_phantom_dataset(
    out_dir,
    n_cases: int,
    seed: int,
    background=None,
    nodes_per_case: tuple[int, int] = (6, 12),
    generator=generate_phantom_case,
    **case_options,
) -> Path:
    """Generate `n_cases` phantom cases into `out_dir` and return the manifest's path.

    Args:
        out_dir: folder to write into (created).
        n_cases: number of cases.
        seed: fixes every case; case i depends only on (seed, i), so the same seed gives the
            same files and a larger `n_cases` extends a smaller data set.
        background: None (synthetic bodies), one real CT (path or (image, geometry) pair), or a
            list of them used in turn.
        nodes_per_case: inclusive range of nodes per case.
        generator: the case generator, called as generator(rng, n_nodes, background=...,
            **case_options): generate_phantom_case (the spec's world), wide_world.generate_wide_case
            or stress_generator.generate_stress_case.
        case_options: passed to the generator (generate_phantom_case: spacing, direction, chest,
            field_of_view_mm).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backgrounds = _background_list(background)
    rows = []
    for index, case_seed in enumerate(np.random.SeedSequence(seed).spawn(n_cases)):
        rng = np.random.default_rng(case_seed)
        case_id = f"phantom_{index:04d}"
        n_nodes = int(rng.integers(nodes_per_case[0], nodes_per_case[1] + 1))
        case = generator(rng, n_nodes, background=backgrounds[index % len(backgrounds)], **case_options)
        rows.append({"case_id": case_id, **write_phantom_case(out_dir / case_id, case)})
    manifest = out_dir / "manifest.csv"
    _write_csv(manifest, MANIFEST_COLUMNS, rows)
    return manifest


def write_phantom_case(case_dir: Path, case: PhantomCase) -> dict:
    """Write one case's files; returns their paths relative to the case folder's parent."""
    case_dir.mkdir(parents=True, exist_ok=True)
    image = np.clip(np.round(case.image), *HU_RANGE).astype(np.int16)
    _write_image(case_dir / "image.nrrd", image, case.geometry)
    _write_image(case_dir / "label_map.nrrd", case.label_map.astype(np.int16), case.geometry)
    _write_csv(
        case_dir / "nodes.csv",
        NODES_COLUMNS,
        [
            {"id": n.node_id, **_xyz(n.seed_ras, ""), "label": n.label, "mask_value": n.mask_value,
             "soft_label": repr(float(n.probability)),
             **{name: _number(value) for name, value in phantom_attributes(n.features).items()}}
            for n in case.nodes
        ],
    )
    _write_csv(
        case_dir / "truth.csv",
        TRUTH_COLUMNS,
        [
            {
                "id": n.node_id,
                **_xyz(n.centre_ras, "centre_"),
                **_xyz(n.seed_ras, "seed_"),
                **{name: _number(value) for name, value in n.features.as_dict().items()},
                "probability": repr(n.probability),
                "label": n.label,
                "mask_value": n.mask_value,
            }
            for n in case.nodes
        ],
    )
    name = case_dir.name
    return {
        "image": f"{name}/image.nrrd",
        "nodes": f"{name}/nodes.csv",
        "label_map": f"{name}/label_map.nrrd",
    }


def _background_list(background) -> list:
    """One entry per background; an (image, geometry) pair is one background, not two."""
    if isinstance(background, list):
        if not background:
            raise ValueError("the background list is empty")
        return background
    return [background]


def _write_image(path: Path, array: np.ndarray, geometry: VolumeGeometry) -> None:
    image = sitk.GetImageFromArray(array)
    geometry.apply_to_sitk(image)
    sitk.WriteImage(image, str(path), useCompression=True)


def _write_csv(path: Path, columns, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _xyz(ras, prefix: str) -> dict:
    """RAS as {prefix r, a, s}; repr keeps every digit, so positions round-trip exactly."""
    return {f"{prefix}{axis}": repr(float(v)) for axis, v in zip("ras", ras)}


def _number(value):
    return int(value) if isinstance(value, (bool, np.bool_)) else repr(float(value))
