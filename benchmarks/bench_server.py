"""Inference server benchmark: "add one seed" round trips and the one-off CT transfer.

    .venv/bin/python benchmarks/bench_server.py --device cpu --json work-tmp/bench-server-cpu.json

Starts two real servers: a "local" one (loopback, no token; the CT may come from a file) and a
"remote" one on another port (token required, optionally TLS; the CT is always uploaded), both
on this computer, so "remote" measures the protocol and the server, not a network. On a
512x512x300 int16 CT it times:

  - hashing the CT (volume_id, which a client computes before asking whether the server has it);
  - sending it once: upload (PUT) to each server, and for the local one writing an .nrrd and
    asking the server to read it (from-file);
  - the "add one seed" round trip with the CT already on the server (submit one seed, wait,
    decode the result), against the same prediction in-process.

Prints a table and writes JSON. Timings are wall-clock medians of --repeats runs after a warm-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "LymphNodeMTL"))
sys.path.insert(0, str(HERE))

from bench_inference import big_phantom, print_ms_rows, write_figures  # noqa: E402

from LymphNodeMTLLib.core.case import Case  # noqa: E402
from LymphNodeMTLLib.inference.engine import NodeEngine  # noqa: E402
from LymphNodeMTLLib.outputs.run_record import package_versions  # noqa: E402
from LymphNodeMTLLib.server import protocol  # noqa: E402
from LymphNodeMTLLib.server.client import InferenceClient  # noqa: E402
from LymphNodeMTLLib.server.launcher import start_server  # noqa: E402

TOKEN = "benchmark-token"


def timed(fn, repeats: int):
    """(median seconds, all seconds, last value) of `repeats` calls."""
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, value


def self_signed(folder: Path):
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def round_trips(client: InferenceClient, vid: str, seeds, repeats: int) -> dict:
    """"Add one seed" with the CT on the server: submit one seed, wait (long poll), decode.

    Medians of the whole round trip, of the engine's part (the job's started..finished on the
    server's clock) and of the rest: HTTP, JSON, queueing and decoding.
    """
    def once(seed):
        t0 = time.perf_counter()
        job = client.wait(client.submit_predict(vid, [seed]))
        [protocol.result_from_json(r) for r in job["results"]]
        total = time.perf_counter() - t0
        return total, job["finished_at"] - job["started_at"]

    once(seeds[0])  # warm-up: first network pass, device copy of the CT
    runs = [once(seeds[(n + 1) % len(seeds)]) for n in range(repeats)]
    return {"round_trip_s": statistics.median(t for t, _ in runs),
            "engine_s": statistics.median(e for _, e in runs),
            "overhead_s": statistics.median(t - e for t, e in runs),
            "round_trip_all_s": [t for t, _ in runs]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shape", default="300,512,512", help="CT shape k,j,i (default 300,512,512)")
    ap.add_argument("--tls", action="store_true", help="serve the remote over HTTPS (needs openssl)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))

    image, geometry, seeds = big_phantom(shape)
    ct = np.clip(np.round(image), -1024, 3071).astype(np.int16)  # as a CT comes from DICOM
    del image
    seeds = seeds[:20]
    figures = {"device": args.device, "shape_kji": list(shape), "ct_mb": ct.nbytes / 2**20,
               "repeats": args.repeats, "python": platform.python_version(), "packages": package_versions()}

    engine = NodeEngine(device=args.device)
    case = Case(ct.astype(np.float32), geometry, seeds[:1])
    engine.predict(case)

    def in_process():
        case.seeds = [seeds[np.random.randint(len(seeds))]]
        return engine.predict(case)

    figures["in_process_one_seed_s"], _, _ = timed(in_process, args.repeats)
    # the server runs jobs on a worker thread; torch's CPU threading behaves differently there
    # on a busy machine, so the same measurement is also taken on a thread
    on_thread = {}
    worker = threading.Thread(target=lambda: on_thread.update(s=timed(in_process, args.repeats)[0]))
    worker.start()
    worker.join()
    figures["in_process_one_seed_thread_s"] = on_thread["s"]

    figures["volume_id_s"], _, vid = timed(lambda: protocol.volume_id(ct, geometry.ijk_to_ras), 3)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        remote_args = ["--port", "0", "--device", args.device, "--token", TOKEN]
        ssl_context = None
        if args.tls:
            import ssl

            cert, key = self_signed(tmp)
            remote_args += ["--tls-cert", str(cert), "--tls-key", str(key)]
            ssl_context = ssl.create_default_context(cafile=cert)
        figures["remote_tls"] = bool(args.tls)
        t0 = time.perf_counter()
        with open(tmp / "local.log", "w") as llog, open(tmp / "remote.log", "w") as rlog, \
                start_server(["--port", "0", "--device", args.device], stderr=llog) as local, \
                start_server(remote_args, stderr=rlog) as remote:
            figures["two_servers_start_s"] = time.perf_counter() - t0
            lc = InferenceClient(local.url)
            rc = InferenceClient(remote.url, token=TOKEN, ssl_context=ssl_context)

            # the one-off transfer; each repeat sends the whole CT again
            figures["local_upload_s"], _, _ = timed(lambda: lc.upload_volume(ct, geometry.ijk_to_ras, vid), 3)
            figures["remote_upload_s"], _, _ = timed(lambda: rc.upload_volume(ct, geometry.ijk_to_ras, vid), 3)
            path = tmp / "ct.nrrd"  # uncompressed: a client writes it for the server to read at once
            image = sitk.GetImageFromArray(ct)
            geometry.apply_to_sitk(image)
            figures["write_nrrd_s"], _, _ = timed(lambda: sitk.WriteImage(image, str(path), useCompression=False), 1)
            figures["local_from_file_s"], _, _ = timed(lambda: lc.volume_from_file(path, vid), 3)
            figures["has_volume_s"], _, _ = timed(lambda: lc.has_volume(vid), args.repeats)

            for name, client in (("local", lc), ("remote", rc)):
                for key, value in round_trips(client, vid, seeds, args.repeats).items():
                    figures[f"{name}_one_seed_{key}"] = value
            figures["health_s"], _, _ = timed(rc.health, args.repeats)
            lc.close()
            rc.close()

    print(f"CT {shape[2]}x{shape[1]}x{shape[0]} int16 ({figures['ct_mb']:.0f} MiB), device {args.device}, "
          f"median of {args.repeats}")
    rows = [
        ("volume_id (client hashes the CT)", "volume_id_s"),
        ("upload to local server (PUT)", "local_upload_s"),
        ("upload to remote server (PUT" + (", TLS" if args.tls else "") + ")", "remote_upload_s"),
        ("write uncompressed .nrrd for from-file", "write_nrrd_s"),
        ("local server reads it (from-file)", "local_from_file_s"),
        ("HEAD: does the server hold the CT", "has_volume_s"),
        ("add one seed, in-process engine", "in_process_one_seed_s"),
        ("add one seed, in-process engine on a thread", "in_process_one_seed_thread_s"),
        ("add one seed, local server round trip", "local_one_seed_round_trip_s"),
        ("  of which the engine (server clock)", "local_one_seed_engine_s"),
        ("  of which HTTP, JSON, queue, decoding", "local_one_seed_overhead_s"),
        ("add one seed, remote server round trip", "remote_one_seed_round_trip_s"),
        ("  of which the engine (server clock)", "remote_one_seed_engine_s"),
        ("  of which HTTP, JSON, queue, decoding", "remote_one_seed_overhead_s"),
        ("GET /v1/health, remote", "health_s"),
    ]
    print_ms_rows(figures, rows)
    print(f"  {'two servers started (engines loaded)':<44} {figures['two_servers_start_s']:9.1f} s")
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
