"""Inference benchmark: stage breakdown, seeds 1/10/50/200, batch sizes, precisions, and MONAI
sliding-window inference of the same network over the whole CT for comparison, in one run; then
the cost of the field-of-view zoom (a case of mixed node sizes, 3-80 mm, against the fixed finest
window) and of the uncertainty (each mask's stability under a threshold change, no further pass),
each on its own.

    .venv/bin/python benchmarks/bench_inference.py --device cpu --json work-tmp/bench-cpu.json
    python benchmarks/bench_inference.py --device cuda --precision fp32,bf16 --channels-last --compile

Prints a table and writes JSON. Timings are wall-clock medians of --repeats runs after a warm-up,
with torch.cuda.synchronize() around each CUDA measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LymphNodeMTL"))

from LymphNodeMTLLib.core.case import Case, Seed  # noqa: E402
from LymphNodeMTLLib.core.geometry import VolumeGeometry  # noqa: E402
from LymphNodeMTLLib.inference.engine import NodeEngine  # noqa: E402
from LymphNodeMTLLib.outputs.run_record import package_versions  # noqa: E402
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case  # noqa: E402
from LymphNodeMTLLib.preprocessing.network_input import network_input, window_hu  # noqa: E402
from LymphNodeMTLLib.preprocessing.patch_sampler import sample_patches  # noqa: E402

SPACING = (0.8, 0.8, 1.0)


def print_ms_rows(figures: dict, rows) -> None:
    """One line per (label, key) of `figures`, in milliseconds."""
    for label, key in rows:
        print(f"  {label:<44} {figures[key] * 1000:9.1f} ms")


def write_figures(figures: dict, path) -> None:
    """The figures as JSON at `path` (nothing when None)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")


def big_phantom(shape_kji=(300, 512, 512), seed=0, tile_mm=100.0):
    """A 512x512x300 phantom: fat with noise, tiled with phantom cases (their nodes are the seeds)."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal(shape_kji, dtype=np.float32)
    image *= 15.0  # in place: no temporary whole-volume copies inflating the memory figure
    image -= 100.0
    geometry = VolumeGeometry.from_lps((0.0, 0.0, 0.0), SPACING, np.eye(3).flatten(), shape_kji)
    seeds = []
    tile = generate_phantom_case(rng, 8, spacing=SPACING, direction=np.eye(3),
                                 field_of_view_mm=(tile_mm, tile_mm, tile_mm))
    th = tile.image.shape
    for k0 in range(0, shape_kji[0] - th[0] + 1, th[0]):
        for j0 in range(0, shape_kji[1] - th[1] + 1, th[1]):
            for i0 in range(0, shape_kji[2] - th[2] + 1, th[2]):
                image[k0:k0 + th[0], j0:j0 + th[1], i0:i0 + th[2]] = tile.image
                for n in tile.nodes:
                    ijk = tile.geometry.ras_to_ijk_points(n.seed_ras)[0] + [i0, j0, k0]
                    seeds.append(Seed(f"{len(seeds) + 1}", tuple(geometry.ijk_to_ras_points(ijk)[0])))
    return image, geometry, seeds


def mixed_size_phantom(shape_kji, n_nodes=20, seed=0, sizes_mm=(3.0, 80.0)):
    """Fat with noise and `n_nodes` spheres of diameters spread log-evenly over `sizes_mm`, each
    in its own 100 mm cell, seeded at their centres: a case where some nodes need a wider view."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal(shape_kji, dtype=np.float32)
    image *= 15.0
    image -= 100.0
    geometry = VolumeGeometry.from_lps((0.0, 0.0, 0.0), SPACING, np.eye(3).flatten(), shape_kji)
    extent = np.asarray(shape_kji[::-1]) * SPACING  # i, j, k in mm
    cells = [np.array([x, y, z]) for z in np.arange(50.0, extent[2] - 49.0, 100.0)
             for y in np.arange(50.0, extent[1] - 49.0, 100.0) for x in np.arange(50.0, extent[0] - 49.0, 100.0)]
    seeds = []
    for n, diameter in enumerate(np.geomspace(*sizes_mm, n_nodes)[:len(cells)]):
        centre = cells[n]  # mm from the first voxel along i, j, k
        r_vox = diameter / 2.0 / np.asarray(SPACING)
        lo = np.maximum(np.floor(centre / SPACING - r_vox).astype(int), 0)
        hi = np.ceil(centre / SPACING + r_vox).astype(int) + 1
        ii, jj, kk = (np.arange(a, b) * s for a, b, s in zip(lo, hi, SPACING))
        d2 = ((kk[:, None, None] - centre[2]) ** 2 + (jj[None, :, None] - centre[1]) ** 2
              + (ii[None, None, :] - centre[0]) ** 2)
        box = image[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        box[d2 <= (diameter / 2.0) ** 2] += 145.0  # 45 HU in -100 HU fat
        ras = geometry.ijk_to_ras_points(centre / np.asarray(SPACING))[0]
        seeds.append(Seed(f"N{n + 1}-{diameter:.0f}mm", tuple(ras)))
    return image, geometry, seeds


def field_of_view_and_uncertainty_costs(engine, shape_kji, repeats):
    """End-to-end seconds of one mixed-size case: fixed finest window, with zoom, and with zoom
    and uncertainty; and how many nodes each field of view took."""
    image, geometry, seeds = mixed_size_phantom(shape_kji)
    case = Case(image, geometry, seeds)
    allowed = engine.config.zoom_spacings_mm
    out = {"seeds": len(seeds)}
    try:
        engine.config.zoom_spacings_mm = allowed[:1]
        out["fixed_window_s"] = timed(lambda: engine.predict(case), engine.device, repeats)
        engine.config.zoom_spacings_mm = allowed
        out["zoom_s"] = timed(lambda: engine.predict(case), engine.device, repeats)
        out["fields_of_view_mm"] = dict(engine.last_fields_of_view_mm)
        engine.uncertainty = True
        out["zoom_and_uncertainty_s"] = timed(lambda: engine.predict(case), engine.device, repeats)
    finally:
        engine.config.zoom_spacings_mm = allowed
        engine.uncertainty = False
    out["zoom_cost"] = out["zoom_s"] / out["fixed_window_s"]
    out["uncertainty_cost"] = out["zoom_and_uncertainty_s"] / out["zoom_s"]
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats, warmup=True):
    if warmup:
        fn()  # warm-up (cuDNN autotune, allocator)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bare_forward(engine, case, n, precision):
    """The batched network forward alone on pre-sampled patches of n seeds."""
    pre = engine.config.preprocessing
    volume = engine._volume_on_device(case.image)
    x = network_input(sample_patches(volume, case.geometry, case.seed_array()[:n], pre.patch_size,
                                     pre.patch_spacing_mm), pre)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def run():
        with torch.inference_mode(), torch.autocast(engine.device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            for s in range(0, n, engine.batch_size):
                engine.network(x[s:s + engine.batch_size])

    return run


def sliding_window(engine, case, overlap, precision):
    from monai.inferers import sliding_window_inference

    pre = engine.config.preprocessing
    volume = engine._volume_on_device(case.image)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def run():
        with torch.inference_mode(), torch.autocast(engine.device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            # same two input channels; the guidance channel is meaningless here: speed only
            x = torch.cat([window_hu(volume, pre), torch.zeros_like(volume)], dim=1)
            roi = (pre.patch_size,) * 3
            sliding_window_inference(x, roi, engine.batch_size,
                                     lambda t: engine.network(t).mask_logits, overlap=overlap)

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", default="1,10,20,50,200")
    p.add_argument("--batch-sizes", default="", help="comma list; default: the engine's own")
    p.add_argument("--precision", default="fp32", help="comma list of fp32,bf16,fp16 (bare forward)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (bare forward)")
    p.add_argument("--sliding-window-overlap", type=float, default=0.25, help="-1 to skip")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shape", default="300,512,512", help="k,j,i voxels")
    p.add_argument("--json", default="", help="write results here")
    p.add_argument("--skip-field-of-view", action="store_true",
                   help="skip the zoom and uncertainty cost measurement")
    args = p.parse_args()

    t0 = time.perf_counter()
    engine = NodeEngine(device=args.device)
    load_s = time.perf_counter() - t0
    device = engine.device
    image, geometry, seeds = big_phantom(tuple(int(v) for v in args.shape.split(",")))
    rss_after_ct = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"device {device}; CT {image.shape} {image.nbytes / 2**20:.0f} MiB; {len(seeds)} seeds available; "
          f"model load {load_s:.2f} s", flush=True)

    # first call including model load (fresh engine, one seed)
    sync(device)
    t0 = time.perf_counter()
    first = NodeEngine(device=args.device)
    first.predict(Case(image, geometry, seeds[:1]))
    sync(device)
    first_call_s = time.perf_counter() - t0
    del first

    rows = []
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b] or [engine.batch_size]
    for bs in batch_sizes:
        engine.batch_size = bs
        for n in [int(v) for v in args.seeds.split(",")]:
            if n > len(seeds):
                continue
            case = Case(image, geometry, seeds[:n])
            engine.timings = {}
            total = timed(lambda: engine.predict(case), device, args.repeats)
            stages = {k: v / (args.repeats + 1) for k, v in engine.timings.items()}
            forward = {prec: timed(bare_forward(engine, case, n, prec), device, args.repeats)
                       for prec in args.precision.split(",")}
            rows.append({"seeds": n, "batch_size": bs, "end_to_end_s": total, "stages_s": stages,
                         "bare_forward_s": forward, "ratio_to_bare_fp32": total / forward.get("fp32", float("nan"))})
            print(f"bs {bs:>3} seeds {n:>3}: end-to-end {total * 1000:8.1f} ms  bare forward "
                  + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in forward.items())
                  + "  stages " + ", ".join(f"{k} {v * 1000:.0f}" for k, v in stages.items()), flush=True)

    # re-classifying one edited node, CT already on the device
    engine.batch_size = batch_sizes[0]
    case = Case(image, geometry, seeds[:10])
    results = engine.predict(case)
    reclassify_s = timed(lambda: engine.classify_masks(case, results[:1]), device, args.repeats)
    print(f"re-classify one node: {reclassify_s * 1000:.1f} ms; first call incl. model load: {first_call_s:.2f} s")

    extra = {}
    if args.channels_last or args.compile:
        net = engine.network
        if args.channels_last:
            engine.network = net.to(memory_format=torch.channels_last_3d)
        if args.compile:
            engine.network = torch.compile(engine.network)
        n = min(50, len(seeds))
        extra["bare_forward_variant_s"] = timed(bare_forward(engine, Case(image, geometry, seeds[:n]), n, "fp32"),
                                                device, args.repeats)
        engine.network = net
        print(f"channels_last={args.channels_last} compile={args.compile}: bare forward {n} seeds "
              f"{extra['bare_forward_variant_s'] * 1000:.1f} ms")

    sw_s = None
    if args.sliding_window_overlap >= 0:
        sw_s = timed(sliding_window(engine, Case(image, geometry, seeds[:1]), args.sliding_window_overlap, "fp32"),
                     device, 1, warmup=device.type == "cuda")  # minutes on a CPU: one run
        print(f"MONAI sliding-window inference over the whole CT (overlap {args.sliding_window_overlap}): {sw_s:.2f} s")

    costs = None
    if not args.skip_field_of_view:
        costs = field_of_view_and_uncertainty_costs(engine, tuple(int(v) for v in args.shape.split(",")),
                                                    args.repeats)
        print(f"mixed node sizes 3-80 mm, {costs['seeds']} seeds: fixed window {costs['fixed_window_s']:.2f} s, "
              f"with zoom {costs['zoom_s']:.2f} s ({costs['zoom_cost']:.2f}x), with zoom and uncertainty "
              f"{costs['zoom_and_uncertainty_s']:.2f} s ({costs['uncertainty_cost']:.2f}x of zoom alone); "
              f"fields of view: {sorted(costs['fields_of_view_mm'].items())}", flush=True)

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        "packages": package_versions(),
        "model_id": engine.model_id,
        "ct_shape_kji": list(image.shape),
        "ct_mib": image.nbytes / 2**20,
        "model_load_s": load_s,
        "first_call_including_model_load_s": first_call_s,
        "reclassify_one_node_s": reclassify_s,
        "sliding_window_s": sw_s,
        "peak_rss_mib": peak_rss_mib,
        "rss_after_ct_mib": rss_after_ct,
        "rows": rows,
        "field_of_view_and_uncertainty": costs,
        **extra,
        "command": " ".join(sys.argv),
    }
    print(f"peak RSS {peak_rss_mib:.0f} MiB (CT {out['ct_mib']:.0f} MiB; target 3 x CT + 1024 = "
          f"{3 * out['ct_mib'] + 1024:.0f} MiB)")
    write_figures(out, args.json)


if __name__ == "__main__":
    main()
