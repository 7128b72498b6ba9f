"""The source CT's slice thickness reaches the metastasis head as its last descriptor
(log_slice_mm): read from the geometry whatever the encoding, carried by the patch cache and the
training samples, passed by the engine on predict and re-classify, and by the refit's capture."""

import math

import numpy as np
import pytest
import torch
from geometry_cases import SPHERE_CENTRE_RAS, other_lattice_encodings, same_lattice_encodings, sphere_volume
from LymphNodeMTLLib.core.case import Case, Seed
from LymphNodeMTLLib.inference.engine import NodeEngine
from LymphNodeMTLLib.network.model_store import ModelConfig
from LymphNodeMTLLib.network.node_descriptors import DESCRIPTOR_NAMES, node_descriptors
from LymphNodeMTLLib.preprocessing.network_input import PreprocessingConfig
from LymphNodeMTLLib.training.descriptor_refit import collect_head_inputs
from LymphNodeMTLLib.training.node_patch_dataset import (
    CaseNodes,
    NodePatchDataset,
    PatchCache,
    build_patch_cache,
)

COLUMN = DESCRIPTOR_NAMES.index("log_slice_mm")


def test_it_is_the_last_descriptor():
    assert COLUMN == len(DESCRIPTOR_NAMES) - 1  # appended last: older models widen with a zero weight


@pytest.mark.parametrize("name,geometry", [*same_lattice_encodings().items(), *other_lattice_encodings().items()])
def test_the_coarsest_spacing_is_the_same_however_the_lattice_is_encoded(name, geometry):
    expected = {"oblique": 1.1, "thick_slices": 5.0}.get(name, 1.0)  # same lattice: 0.8 x 0.7 x 1.0
    assert geometry.coarsest_spacing_mm == pytest.approx(expected, abs=1e-9)


def _ball(n=20, radius=5):
    z, y, x = np.mgrid[:n, :n, :n] - (n - 1) / 2
    mask = torch.tensor((x**2 + y**2 + z**2) <= radius**2, dtype=torch.float32)[None, None]
    return mask, mask * 0.5


def test_the_descriptor_is_the_log_of_the_given_thickness_else_of_the_patch_spacing():
    mask, image = _ball()
    both = torch.cat([mask, mask]), torch.cat([image, image])
    given = node_descriptors(*both, 1.0, slice_mm=torch.tensor([0.7, 5.0]))[:, COLUMN]
    torch.testing.assert_close(given, torch.log(torch.tensor([0.7, 5.0])))
    assert float(node_descriptors(mask, image, 1.25)[0, COLUMN]) == pytest.approx(math.log(1.25))
    empty = node_descriptors(torch.zeros_like(mask), image, 1.0, slice_mm=torch.tensor([5.0]))
    assert torch.all(empty == 0)  # an empty mask describes nothing


class _HeadInputs:
    """Records what the engine's network hands its metastasis head."""

    def __init__(self, network):
        self.rows = []
        self.hook = network.head.register_forward_hook(lambda _m, args, _o: self.rows.append(args[0].clone()))

    def last_column(self):
        return torch.cat(self.rows)[:, -len(DESCRIPTOR_NAMES) + COLUMN]


@pytest.mark.parametrize("name", ["oblique", "thick_slices"])
def test_the_engine_passes_the_thickness_on_predict_and_on_reclassify(name):
    engine = NodeEngine(device="cpu")
    geometry = other_lattice_encodings()[name]
    image, _ = sphere_volume(geometry)
    case = Case(image, geometry, [Seed("1", tuple(SPHERE_CENTRE_RAS)), Seed("2", tuple(SPHERE_CENTRE_RAS + 1.0))])
    seen = _HeadInputs(engine.network)
    results = engine.predict(case)
    engine.classify_masks(case, results)
    seen.hook.remove()
    expected = math.log(geometry.coarsest_spacing_mm)
    assert len(seen.rows) == 2  # one batch each
    # the descriptors of a node read as zeros where its mask is empty (two seeds on one sphere: the
    # overlap goes to one of them; a mask the engine emptied)
    present = torch.tensor([True, True] + [not r.is_empty for r in results])
    column = seen.last_column()
    assert bool(present[:2].all()) and bool(present.any())
    torch.testing.assert_close(column[present], torch.full((int(present.sum()),), expected))


def _case_nodes(geometry, case_id):
    image, _ = sphere_volume(geometry)
    return CaseNodes(case_id, image, geometry, np.array([SPHERE_CENTRE_RAS]), ["n1"], [1], [None])


def test_the_cache_records_each_node_source_and_the_samples_carry_it():
    pre = PreprocessingConfig(patch_size=16)
    thick, fine = other_lattice_encodings()["thick_slices"], same_lattice_encodings()["permuted_sagittal"]
    cache = build_patch_cache([_case_nodes(thick, "a"), _case_nodes(fine, "b")], pre, jitter_mm=1.0)
    torch.testing.assert_close(cache.slice_mm, torch.tensor([5.0, 1.0]))
    torch.testing.assert_close(cache.subset([1]).slice_mm, torch.tensor([1.0]))
    unknown = PatchCache(cache.images[:1], cache.masks[:1], cache.labels[:1], cache.has_mask[:1], ["x"], ["c"],
                         cache.margin)
    joined = PatchCache.concatenate([cache, unknown])
    samples = NodePatchDataset(joined, pre, augment=False)
    # a node whose source is unknown is read as fine as the patch
    assert [float(samples[i]["slice_mm"]) for i in range(3)] == [5.0, 1.0, pre.patch_spacing_mm]


def test_the_refit_capture_reads_the_thickness_it_is_given():
    torch.manual_seed(0)
    net = ModelConfig("t", network={"channels": [4, 8]}).build_network().eval()
    x = torch.randn(3, 2, 16, 16, 16)
    rows = collect_head_inputs(net, [(x, torch.tensor([0.7, 2.5, 5.0])), x])
    torch.testing.assert_close(rows[:, -len(DESCRIPTOR_NAMES) + COLUMN],
                               torch.log(torch.tensor([0.7, 2.5, 5.0, 1.0, 1.0, 1.0])))
