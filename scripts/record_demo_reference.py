"""Record the bundled model's outputs on the demo phantom (Testing/data/bundled_model_demo_reference.json).

Run only when the bundled model is replaced on purpose: Testing/test_bundled_model_reference.py holds
every refactoring to these exact figures.

    .venv/bin/python scripts/record_demo_reference.py
"""

import json
from pathlib import Path

import numpy as np
from LymphNodeMTLLib.core.mask_checksum import mask_checksum
from LymphNodeMTLLib.inference.engine import NodeEngine
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case

OUT = Path(__file__).resolve().parents[1] / "Testing" / "data" / "bundled_model_demo_reference.json"
PHANTOM = {"rng": 2026, "nodes": 8, "spacing": [0.8, 0.8, 2.0]}  # the demo command's defaults


def main() -> None:
    case = generate_phantom_case(np.random.default_rng(PHANTOM["rng"]), PHANTOM["nodes"],
                                 spacing=tuple(PHANTOM["spacing"]), direction=np.eye(3)).to_case()
    engine = NodeEngine(device="cpu")
    results = engine.predict(case)
    reclassified = engine.classify_masks(case, results)
    nodes = [{"id": r.node_id, "probability": r.probability, "reclassified_probability": q.probability,
              "mask_checksum": mask_checksum(r.mask, r.bbox_start_kji), "volume_mm3": r.volume_mm3,
              "short_axis_mm": r.short_axis_mm, "long_axis_mm": r.long_axis_mm}
             for r, q in zip(results, reclassified)]
    OUT.write_text(json.dumps({"phantom": PHANTOM, "nodes": nodes}, indent=1) + "\n")
    print(f"wrote {OUT} ({len(nodes)} nodes)")


if __name__ == "__main__":
    main()
