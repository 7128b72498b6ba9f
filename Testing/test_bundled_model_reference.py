"""The bundled model's outputs on the demo phantom match the recorded reference exactly.

The reference (Testing/data/bundled_model_demo_reference.json) was recorded with the bundled model on
the CPU; a refactoring that changes what the network, the paste-back or the measurements compute
fails here. Re-record it (scripts/record_demo_reference.py) only when the model itself is replaced.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from LymphNodeMTLLib.core.mask_checksum import mask_checksum
from LymphNodeMTLLib.inference.engine import NodeEngine
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case

REFERENCE = Path(__file__).parent / "data" / "bundled_model_demo_reference.json"


@pytest.fixture(scope="module")
def reference_and_results():
    ref = json.loads(REFERENCE.read_text())
    ph = ref["phantom"]
    case = generate_phantom_case(np.random.default_rng(ph["rng"]), ph["nodes"], spacing=tuple(ph["spacing"]),
                                 direction=np.eye(3)).to_case()
    engine = NodeEngine(device="cpu")
    results = engine.predict(case)
    return ref, results, engine.classify_masks(case, results)


def test_bundled_model_masks_are_the_recorded_ones(reference_and_results):
    ref, results, _ = reference_and_results
    assert [r.node_id for r in results] == [n["id"] for n in ref["nodes"]]
    for r, n in zip(results, ref["nodes"]):
        assert mask_checksum(r.mask, r.bbox_start_kji) == n["mask_checksum"], r.node_id
        assert r.volume_mm3 == pytest.approx(n["volume_mm3"], abs=1e-6)
        assert r.short_axis_mm == pytest.approx(n["short_axis_mm"], abs=1e-6)
        assert r.long_axis_mm == pytest.approx(n["long_axis_mm"], abs=1e-6)


def test_bundled_model_probabilities_are_the_recorded_ones(reference_and_results):
    ref, results, reclassified = reference_and_results
    for r, q, n in zip(results, reclassified, ref["nodes"]):
        assert r.probability == pytest.approx(n["probability"], abs=1e-6), r.node_id
        assert q.probability == pytest.approx(n["reclassified_probability"], abs=1e-6), r.node_id
