"""The inference server end to end: a real `lymphnode-mtl serve` process on loopback and its API.

One server process serves most of the module (start-ups are the slow part; only the TLS test
starts a second); a phantom CT of 32x96x96 voxels keeps every job short. Results are compared with
an in-process NodeEngine on the same CT, so the server is held to exactly what the engine gives.
The service and the HTTP layer are also tested in-process, with an engine the test steps batch by
batch, where timing would otherwise decide the outcome.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from LymphNodeMTLLib.core.case import Case, Seed
from LymphNodeMTLLib.core.node_prompts import Click, NodePrompts
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.inference.engine import NodeEngine
from LymphNodeMTLLib.io.volume_reader import read_volume, write_volume
from LymphNodeMTLLib.network.model_store import default_model_dir
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case
from LymphNodeMTLLib.server import protocol
from LymphNodeMTLLib.server.client import InferenceClient, ServerError
from LymphNodeMTLLib.server.job_steps import refine_job
from LymphNodeMTLLib.server.launcher import LIB_PARENT, start_server

TOKEN = "s3cret-token-for-tests"
UPLOAD_LIMIT_MB = 1  # the phantom (0.6 MB as int16) fits, 1.5 MB does not
START_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def phantom():
    ph = generate_phantom_case(np.random.default_rng(5), 3, spacing=(1.0, 1.0, 2.0), field_of_view_mm=(96, 96, 64))
    image = np.round(ph.image).astype(np.int16)  # a CT as Slicer holds it
    seeds = [Seed(n.node_id, tuple(n.seed_ras)) for n in ph.nodes]
    return image, ph.geometry, seeds


@pytest.fixture(scope="module")
def engine():
    return NodeEngine(device="cpu")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server on a free loopback port: token from a file, 1 MB uploads, two model names."""
    folder = tmp_path_factory.mktemp("server")
    token_file = folder / "token.txt"
    token_file.write_text(TOKEN + "\n")
    log_path = folder / "server.log"
    model = str(default_model_dir())
    with open(log_path, "w") as log:
        served = start_server(["--port", "0", "--device", "cpu", "--token-file", str(token_file),
                               "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--model", model, "--model", model],
                              stderr=log, timeout=START_TIMEOUT_S)
    assert served.url, log_path.read_text()
    try:
        yield {"url": served.url, "log": log_path, "folder": folder}
    finally:
        served.stop()


@pytest.fixture(scope="module")
def client(server):
    c = InferenceClient(server["url"], token=TOKEN)
    yield c
    c.close()


@pytest.fixture(scope="module")
def volume(client, phantom):
    image, geometry, _ = phantom
    return client.ensure_volume(image, geometry.ijk_to_ras)


def _in_process_case(phantom, seeds=None):
    image, geometry, all_seeds = phantom
    # the server keeps CTs as float32 HU, as the volume reader gives them
    return Case(image.astype(np.float32), geometry, list(all_seeds if seeds is None else seeds))


def _assert_same_results(got, expected):
    assert [r.node_id for r in got] == [r.node_id for r in expected]
    for g, e in zip(got, expected):
        assert g.bbox_start_kji == e.bbox_start_kji and g.bbox_stop_kji == e.bbox_stop_kji
        np.testing.assert_array_equal(g.mask, e.mask)
        assert g.probability == pytest.approx(e.probability, abs=1e-6)
        assert g.predicted_label == e.predicted_label
        assert g.volume_mm3 == pytest.approx(e.volume_mm3)
        assert g.short_axis_mm == pytest.approx(e.short_axis_mm)
        assert g.status == e.status
        assert g.model == e.model and g.model.weights_sha256


def _raw_request(url, head: bytes, body_chunks=()) -> tuple[int, dict]:
    """Send a hand-made request on a plain socket; (status, JSON body) of the answer."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
        except OSError:
            pass  # the server answered and closed before the whole body: what we are testing
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            more = s.recv(65536)
            if not more:
                break
            data += more
    head_text, _, body = data.partition(b"\r\n\r\n")
    return int(head_text.split()[1]), json.loads(body or b"{}")


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


# --- health, CTs ----------------------------------------------------------------------------------
def test_health_names_the_models_and_the_device(client, engine):
    h = client.health()
    assert h["api_version"] == 1 and h["status"] == "ok" and h["device"] == "cpu"
    assert h["model_id"] == engine.model_id and h["weights_sha256"] == engine.model.weights_sha256
    assert [m["name"] for m in h["models"]] == ["phantom-demo", "phantom-demo-2"]
    assert all(m["model_id"] == engine.model_id for m in h["models"])
    assert h["max_upload_bytes"] == UPLOAD_LIMIT_MB * 2**20 and h["from_file"] is True


def test_upload_stores_the_ct_under_its_content_hash(client, phantom, volume):
    image, geometry, _ = phantom
    assert volume == protocol.volume_id(image, geometry.ijk_to_ras)
    assert client.has_volume(volume)
    other = image.copy()
    other[0, 0, 0] += 1
    assert not client.has_volume(protocol.volume_id(other, geometry.ijk_to_ras))


def test_upload_under_a_wrong_id_is_refused_and_not_stored(client, phantom):
    image, geometry, _ = phantom
    other = image.copy()
    other[1, 2, 3] -= 5
    wrong = protocol.volume_id(image, geometry.ijk_to_ras)[::-1]
    with pytest.raises(ServerError) as err:
        client.upload_volume(other, geometry.ijk_to_ras, volume_id=wrong)
    assert err.value.status == 400 and "does not match" in str(err.value)
    assert not client.has_volume(wrong)
    assert not client.has_volume(protocol.volume_id(other, geometry.ijk_to_ras))


@pytest.mark.parametrize("make", [
    lambda image: np.zeros_like(image),  # an empty volume
    lambda image: (image > 0).astype(np.int16),  # a label map sent as the CT
    lambda image: (image.astype(np.int32) + 1024).astype(np.int16),  # raw stored values, no rescale
], ids=["all_zero", "label_map", "no_rescale"])
def test_an_upload_that_is_no_ct_is_refused_and_not_stored(client, phantom, make):
    image, geometry, _ = phantom
    not_ct = make(image)
    with pytest.raises(ServerError) as err:
        client.upload_volume(not_ct, geometry.ijk_to_ras)
    assert err.value.status == 400 and "\n" not in str(err.value)
    assert not client.has_volume(protocol.volume_id(not_ct, geometry.ijk_to_ras))


def test_from_file_reads_the_ct_with_the_volume_reader(client, phantom, tmp_path):
    image, geometry, _ = phantom
    path = tmp_path / "ct.nrrd"
    write_volume(path, image[:, ::-1].copy(), geometry)  # not the uploaded CT: a new id
    read_image, read_geometry, _ = read_volume(path)
    expected = protocol.volume_id(read_image, read_geometry.ijk_to_ras)
    clients_name = protocol.volume_id(image[:, ::-1], geometry.ijk_to_ras)
    assert not client.has_volume(expected)
    answer = client.volume_from_file(path, clients_name)
    assert answer == {"volume_id": expected, "shape": list(image.shape)}
    assert client.has_volume(expected) and client.has_volume(clients_name)


def test_from_file_problems_are_one_line_400s(client, tmp_path):
    too_long = tmp_path / ("x" * 300 + ".nrrd")  # a name the file system itself refuses
    for path, words in ((tmp_path / "missing.nrrd", "not found"), ("relative/ct.nrrd", "absolute"),
                        (too_long, "cannot read that path")):
        with pytest.raises(ServerError) as err:
            client.volume_from_file(path, "0" * 64)
        assert err.value.status == 400 and words in str(err.value) and "\n" not in str(err.value)


# --- jobs -----------------------------------------------------------------------------------------
def test_predict_gives_what_the_engine_gives_in_process(client, volume, phantom, engine):
    expected = engine.predict(_in_process_case(phantom))
    got = client.predict(volume, phantom[2], timeout=300)
    _assert_same_results(got, expected)
    assert any(not r.is_empty for r in got)


def test_predict_with_the_second_model_name(client, volume, phantom, engine):
    seed = phantom[2][:1]
    got = client.predict(volume, seed, model="phantom-demo-2", options={"not_an_option": 1}, timeout=300)
    _assert_same_results(got, engine.predict(_in_process_case(phantom, seed)))


def test_classify_returns_the_given_masks_unchanged(client, volume, phantom, engine):
    given = engine.predict(_in_process_case(phantom))
    for r in given:  # a radiologist's edit: the first slice of every mask removed
        r.mask = r.mask.copy()
        r.mask[0] = False
    got = client.classify(volume, given, timeout=300)
    expected = engine.classify_masks(_in_process_case(phantom), given)
    assert [r.node_id for r in got] == [r.node_id for r in given]
    for g, r, e in zip(got, given, expected):
        assert g.bbox_start_kji == r.bbox_start_kji and g.bbox_stop_kji == r.bbox_stop_kji
        np.testing.assert_array_equal(g.mask, r.mask)
        assert g.probability == pytest.approx(e.probability, abs=1e-6)
        assert g.volume_mm3 == pytest.approx(e.volume_mm3)


def test_refine_gives_what_the_engine_gives_for_the_same_prompts(client, volume, phantom, engine):
    seed, other = phantom[2][0], np.asarray(phantom[2][1].ras)  # the second node given by a line alone
    ras = np.asarray(seed.ras)
    prompts = [NodePrompts(seed.node_id, seed=seed.ras, clicks=(Click(tuple(ras + [2.0, 0.0, 0.0]), True),
                                                                 Click(tuple(ras + [9.0, 0.0, 0.0]), False))),
               NodePrompts("L", line=(tuple(other - [4.0, 0.0, 0.0]), tuple(other + [4.0, 0.0, 0.0])))]
    got = client.refine(volume, prompts, timeout=300)
    case = _in_process_case(phantom, [seed, prompts[1].as_seed()])
    expected = engine.predict(case, prompts={p.node_id: p for p in prompts})
    _assert_same_results(got, expected)
    assert got[0].extra["prompts"] == 2 and got[1].node_id == "L"


def test_refine_prompts_the_engine_cannot_follow_are_422_at_once(client, volume, phantom):
    seed = phantom[2][0]
    far = NodePrompts("far", line=(tuple(np.add(seed.ras, [0.0, 0.0, 500.0])), tuple(np.add(seed.ras, [9.0, 0, 500.0]))))
    err = _post_job(client, {"volume_id": volume, **refine_job([far])})
    assert err.status == 422 and "outside the CT" in str(err) and "\n" not in str(err)
    err = _post_job(client, {"volume_id": volume, "kind": "refine", "prompts": {"nodes": {"a": {}}}})
    assert err.status == 422 and "coordinate_system" in str(err)


def _many_seeds(phantom, n):
    """n distinct seeds around the phantom's nodes (a lattice of offsets wider than a voxel, so no two
    share a position): a job of n / 8 batches on the CPU."""
    base = phantom[2]
    steps = np.array([1.5, 1.5, 2.5])  # mm; the CT's voxels are 1 x 1 x 2 mm
    offsets = [steps * (np.array([j % 3, (j // 3) % 3, j // 9]) - [1, 1, 2]) for j in range(-(-n // len(base)))]
    return [Seed(f"S{i}", tuple(np.asarray(base[i % len(base)].ras) + offsets[i // len(base)])) for i in range(n)]


def test_two_jobs_on_one_ct_queue_and_the_second_waits(client, volume, phantom):
    first = client.submit_predict(volume, _many_seeds(phantom, 16))
    _until(lambda: client.job(first)["state"] == "running")
    second = client.submit_predict(volume, phantom[2][:1])
    waiting = client.job(second)
    assert waiting["state"] == "queued" and waiting["queue_position"] == 0
    done_second = client.wait(second, timeout=300)
    done_first = client.job(first)
    assert done_first["state"] == "done" and done_second["state"] == "done"
    assert done_second["started_at"] >= done_first["finished_at"]
    assert len(done_first["results"]) == 16 and len(done_second["results"]) == 1


def test_cancel_stops_a_running_job_at_its_next_batch(client, volume, phantom):
    long_job = client.submit_predict(volume, _many_seeds(phantom, 96))  # 12 batches
    behind = client.submit_predict(volume, phantom[2][:1])
    deadline = time.monotonic() + 300
    while client.job(long_job)["progress"]["done"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # cancel once the first batch is through: the job is really running
    assert client.cancel(long_job)["state"] == "cancelled"
    assert client.wait(behind, timeout=300)["state"] == "done"  # runs only once the long job stopped
    stopped = client.job(long_job)
    assert stopped["state"] == "cancelled" and stopped["results"] is None
    assert stopped["progress"]["stage"] == "cancelled"
    assert stopped["progress"]["done"] < stopped["progress"]["total"] == 96
    with pytest.raises(ServerError, match="cancelled"):
        client.run(long_job)


def test_cancel_of_a_queued_job_means_it_never_runs(client, volume, phantom):
    first = client.submit_predict(volume, _many_seeds(phantom, 32))
    queued = client.submit_predict(volume, phantom[2][:1])
    assert client.cancel(queued)["state"] == "cancelled"
    client.cancel(first)
    _until(lambda: client.job(first)["progress"]["stage"] == "cancelled", timeout=300)
    job = client.job(queued)
    assert job["state"] == "cancelled" and job["started_at"] is None and job["results"] is None


# --- security and refusals ------------------------------------------------------------------------
def test_missing_or_wrong_token_is_refused_and_nothing_runs(server, client, volume, phantom):
    image, geometry, seeds = phantom
    before = client.health()["jobs"]["submitted"]
    other = image.copy()
    other[3, 3, 3] += 7
    for token in (None, "wrong", TOKEN + "x"):
        bad = InferenceClient(server["url"], token=token)
        for call in (bad.health, lambda: bad.submit_predict(volume, seeds),
                     lambda: bad.upload_volume(other, geometry.ijk_to_ras)):
            with pytest.raises(ServerError) as err:
                call()
            assert err.value.status == 401 and "token" in str(err.value)
        bad.close()
    assert client.health()["jobs"]["submitted"] == before
    assert not client.has_volume(protocol.volume_id(other, geometry.ijk_to_ras))


@pytest.mark.parametrize("args, words", [
    (["--host", "0.0.0.0"], "without a token"),
    (["--host", "192.0.2.1", "--tls-cert", "c.pem", "--tls-key", "k.pem"], "without a token"),
    (["--token-file", "/nonexistent/token.txt"], "token file"),
    (["--tls-cert", "/nonexistent/cert.pem"], "--tls-key"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
])
def test_serve_refuses_to_start_with_one_line(args, words):
    env = {k: v for k, v in os.environ.items() if k != "LYMPHNODE_MTL_TOKEN"}
    env["PYTHONPATH"] = str(LIB_PARENT)
    done = subprocess.run([sys.executable, "-m", "LymphNodeMTLLib.commands.cli", "serve", "--port", "0", *args],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr


def test_upload_over_the_limit_is_413(server, client, phantom):
    image, geometry, _ = phantom
    big = np.zeros((48, 96, 96), np.int16)  # 3.4 MB as float64
    headers = protocol.volume_headers(big.astype(np.float64), geometry.ijk_to_ras)
    vid = protocol.volume_id(big.astype(np.float64), geometry.ijk_to_ras)
    head = (f"PUT /v1/volumes/{vid} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {big.size * 8}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    status, body = _raw_request(server["url"], head)  # refused on its Content-Length alone
    assert status == 413 and "upload limit" in body["error"]
    small = protocol.volume_headers(np.zeros((4, 4, 4), np.int16), geometry.ijk_to_ras)
    chunked = (f"PUT /v1/volumes/{vid} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               "Transfer-Encoding: chunked\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in small.items()) + "\r\n").encode()
    chunk = b"%x\r\n" % (256 * 1024) + b"\0" * (256 * 1024) + b"\r\n"
    status, body = _raw_request(server["url"], chunked, [chunk] * 14)  # a body longer than it said:
    assert status == 413  # counted as it comes, refused once past the limit
    status, body = _raw_request(server["url"], head.replace(b"Content-Length: %d" % (big.size * 8), b"Content-Length: 0"))
    assert status == 413 and "upload limit" in body["error"]  # the declared shape alone is too big
    with pytest.raises(ServerError) as err:
        client.upload_volume(big.astype(np.float32)[:40], geometry.ijk_to_ras)  # 1.4 MB
    assert err.value.status == 413
    assert not client.has_volume(vid)


def _post_job(client, body):
    with pytest.raises(ServerError) as err:
        client.request("POST", "/v1/jobs", body=body)
    return err.value


@pytest.mark.parametrize("body, status, words", [
    ({"kind": "predict", "seeds": []}, 422, "volume_id"),
    ({"volume_id": "V", "kind": "segment"}, 422, "kind"),
    ({"volume_id": "V", "kind": "predict", "seeds": [{"id": "a", "ras": [1, 2]}]}, 422, "seeds.0.ras"),
    ({"volume_id": "V", "kind": "predict", "seeds": [{"id": "a", "ras": [1, 2, "x"]}]}, 422, "seeds.0.ras"),
    ({"volume_id": "V", "kind": "predict", "seeds": []}, 422, "no seeds"),
    ({"volume_id": "V", "kind": "predict", "seeds": [{"id": "a", "ras": [9e3, 0, 0]}]}, 422, "outside the CT"),
    ({"volume_id": "V", "kind": "predict", "model": "nope", "seeds": []}, 404, "unknown model"),
    ({"volume_id": "0" * 64, "kind": "predict", "seeds": [{"id": "a", "ras": [0, 0, 0]}]}, 404, "upload it"),
    ({"volume_id": "V", "kind": "classify", "masks": [{"id": "a"}]}, 422, "seed_ras"),
    ({"volume_id": "V", "kind": "classify", "masks": [{"id": "a", "seed_ras": [0, 0, 0], "bbox_start_kji": [0, 0, 0],
                                                       "bbox_stop_kji": [2, 2, 2], "mask": "!!"}]}, 422, "base64"),
    ({"volume_id": "V", "kind": "classify", "masks": [{"id": "a", "seed_ras": [0, 0, 0], "bbox_start_kji": [0, 0, 0],
                                                       "bbox_stop_kji": [999, 2, 2], "mask": "AA=="}]}, 422, "packed"),
])
def test_malformed_jobs_are_4xx_with_one_line(client, volume, body, status, words):
    body = {k: (volume if v == "V" else v) for k, v in body.items()}
    err = _post_job(client, body)
    assert err.status == status and words in str(err) and "\n" not in str(err)


def test_malformed_requests_are_4xx_with_one_line(server, client, volume, phantom):
    image, geometry, _ = phantom
    cases = [
        (lambda: client.request("POST", "/v1/jobs", body=b"{not json", headers={"Content-Type": "application/json"}),
         400, "not valid JSON"),
        (lambda: client.request("PUT", f"/v1/volumes/{volume}", body=b"\0" * 10,
                                headers={"X-LNM-Shape": "2,2", "X-LNM-Dtype": "int16",
                                         "X-LNM-IJK-To-RAS": ",".join(["1"] * 16)}), 400, "X-LNM-Shape"),
        (lambda: client.request("PUT", f"/v1/volumes/{volume}", body=b"\0" * 10,
                                headers=protocol.volume_headers(image, geometry.ijk_to_ras)), 400, "bytes"),
        (lambda: client.job("f" * 32), 404, "unknown job"),
        (lambda: client.cancel("f" * 32), 404, "unknown job"),
        (lambda: client.request("GET", "/v1/jobs/x?wait=-1"), 422, "wait"),
        (lambda: client.request("GET", "/v1/nothing"), 404, "no such route"),
        (lambda: client.request("PATCH", "/v1/health"), 405, "not allowed"),
    ]
    for call, status, words in cases:
        with pytest.raises(ServerError) as err:
            call()
        assert err.value.status == status, words
        assert words in str(err.value) and "\n" not in str(err.value)
    assert client.health()["status"] == "ok"  # none of it hurt the server


def test_the_log_holds_routes_not_patient_data(server, client, volume, phantom):
    # runs after the jobs above: their ids, seeds and file paths must not be in the log
    client.predict(volume, phantom[2][:1], timeout=300)
    time.sleep(0.2)
    log = server["log"].read_text()
    assert "POST /v1/jobs 202" in log and "GET /v1/jobs/{job_id} 200" in log
    assert "PUT /v1/volumes/{volume_id} 201" in log
    for secret in (volume, volume[:12], "N01", "S12", "ct.nrrd", TOKEN, str(server["folder"])):
        assert secret not in log, secret


def test_a_finished_job_is_what_the_schema_says(client, volume, phantom):
    from LymphNodeMTLLib.server.api_models import JobOut, NodeResultOut

    job = client.wait(client.submit_predict(volume, phantom[2][:2]), timeout=300)
    assert job["state"] == "done" and len(job["results"]) == 2
    JobOut.model_validate(job, strict=True)  # GET /v1/jobs writes the service's JSON as it is
    assert set(job) == set(JobOut.model_fields)
    assert all(set(r) == set(NodeResultOut.model_fields) for r in job["results"])


def test_every_answer_the_server_gave_is_in_its_schema(server, client):
    # runs after the tests above (one module-wide server): each status the log shows for a route
    # is among that operation's documented responses
    time.sleep(0.2)  # a line is logged just after its answer is sent
    answers = set(re.findall(r"lymphnode_mtl\.server: ([A-Z]+) (\S+) (\d{3}) ", server["log"].read_text()))
    schema = client.request("GET", "/openapi.json")[1]
    routed = {(m, r, s) for m, r, s in answers if r != "-"}
    assert {s for _, _, s in routed} >= {"200", "201", "202", "400", "404", "413", "422"}  # the tests' variety
    for method, route, status in routed:
        operation = schema["paths"][route].get(method.lower())
        if operation is None:  # a method the path does not take
            assert status == "405", (method, route, status)
        else:
            assert status in operation["responses"], (method, route, status)
    # before any route: the token (documented on every operation), no such route or method
    assert {s for _, r, s in answers if r == "-"} <= {"401", "404", "405"}


def test_tls_server_answers_https_and_stops_with_its_parent(tmp_path):
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate to serve")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        with open(tmp_path / "log.txt", "w") as log, start_server(
                ["--port", "0", "--device", "cpu", "--tls-cert", str(cert), "--tls-key", str(key),
                 "--parent-pid", str(parent.pid)],
                stderr=log, env={"LYMPHNODE_MTL_TOKEN": TOKEN}, timeout=START_TIMEOUT_S) as served:
            assert served.url.startswith("https://127.0.0.1:")
            trusting = ssl.create_default_context(cafile=cert)
            secure = InferenceClient(served.url, token=TOKEN, ssl_context=trusting)
            assert secure.health()["status"] == "ok"
            with pytest.raises(ServerError) as err:  # the token from the environment is required
                InferenceClient(served.url, ssl_context=trusting).health()
            assert err.value.status == 401
            with pytest.raises(ServerError) as err:  # a client that does not trust the certificate
                InferenceClient(served.url, token=TOKEN).health()
            assert err.value.status == 0
            secure.close()
            parent.kill()  # the parent "crashes": the server stops by itself
            parent.wait()
            assert served.proc.wait(timeout=60) is not None
        assert "parent process ended" in (tmp_path / "log.txt").read_text()
    finally:
        parent.kill()
        parent.wait()


# --- the service in-process, with an engine the test steps batch by batch ------------------------
class SteppedEngine:
    """Stands in for NodeEngine: two seeds per batch, each batch waits for the test's permit."""

    def __init__(self, name):
        from types import SimpleNamespace

        self.model_id, self.device = name, "cpu"
        self.model = SimpleNamespace(weights_sha256="0" * 64)
        self.permits = threading.Semaphore(0)
        self.batches = 0

    def predict(self, case, progress=None):
        total = len(case.seeds)
        for stop in range(2, total + 2, 2):
            assert self.permits.acquire(timeout=30), "the test never let this batch through"
            self.batches += 1
            progress("nodes", min(stop, total), total)
        return [NodeResult(s.node_id, s.ras, (0, 0, 0), (1, 1, 1), np.ones((1, 1, 1), bool)) for s in case.seeds]

    def classify_masks(self, case, results):
        return results


def _stepped_service(models=("m1",), max_volume_bytes=1 << 30):
    from LymphNodeMTLLib.server.inference_service import InferenceService

    return InferenceService([Path(m) for m in models], max_volume_bytes=max_volume_bytes,
                            engine_factory=lambda d, device: SteppedEngine(Path(d).name),
                            ct_check=None)  # the tiny constant test CTs are no CT: the stand-in engine does not care


def _small_ct(value=0):
    image = np.full((4, 4, 4), value, np.int16)
    return image, np.diag([1.0, 1.0, 1.0, 1.0])


def _seeds(n):
    """n seeds in distinct voxels of the 4 x 4 x 4 test CT."""
    return [Seed(f"n{i}", (float(i % 4), float(i // 4 % 4), float(i // 16))) for i in range(n)]


def _until(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_service_cancel_stops_the_engine_after_the_batch_it_is_in():
    service = _stepped_service()
    engine = service.engines["m1"]
    vid = service.add_volume(*_small_ct())
    job = service.submit("predict", vid, seeds=_seeds(6))  # three batches
    engine.permits.release()
    _until(lambda: job.done == 2)
    service.cancel(job.job_id)
    assert job.state == "cancelled" and job.stage == "cancelled"  # at once, though its second batch still runs
    assert service.job(job.job_id).to_json()["progress"]["stage"] == "cancelled"
    engine.permits.release(5)
    assert job.finished.wait(30)
    assert engine.batches == 2 and job.done == 4 and job.stage == "cancelled" and job.results is None
    service.close()


def test_service_runs_one_job_per_ct_and_other_cts_alongside():
    service = _stepped_service(models=("m1", "m2"))
    ct1 = service.add_volume(*_small_ct(1))
    ct2 = service.add_volume(*_small_ct(2))
    a = service.submit("predict", ct1, model="m1", seeds=_seeds(2))
    b = service.submit("predict", ct1, model="m2", seeds=_seeds(2))  # m2 is free, the CT is not
    c = service.submit("predict", ct2, model="m2", seeds=_seeds(2))
    _until(lambda: a.state == "running" and c.state == "running")
    assert b.state == "queued" and service.job(b.job_id).queue_position == 0
    service.engines["m2"].permits.release()
    assert c.finished.wait(30) and c.state == "done"
    assert b.state == "queued"  # still behind a, which has not been let through
    service.engines["m1"].permits.release()
    service.engines["m2"].permits.release()
    assert b.finished.wait(30) and a.state == "done" and b.state == "done"
    assert b.started_at >= a.finished_at
    assert [r["node_id"] for r in b.results] == ["n0", "n1"]
    service.close()


def test_service_store_drops_the_least_recently_used_ct_and_counts_aliases_once():
    one_ct = 4 * 4 * 4 * 4  # float32 bytes of a 4x4x4 CT
    service = _stepped_service(max_volume_bytes=2 * one_ct)
    first = service.add_volume(*_small_ct(1), also_known_as="first-by-another-name")
    second = service.add_volume(*_small_ct(2))
    assert service.volumes.total_bytes() == 2 * one_ct
    service.volumes.get(first)  # used: now the second is the oldest
    third = service.add_volume(*_small_ct(3))
    assert service.has_volume(first) and service.has_volume("first-by-another-name")
    assert service.has_volume(third) and not service.has_volume(second)
    with pytest.raises(Exception, match="upload it first"):
        service.submit("predict", second, seeds=_seeds(1))
    service.close()


def test_parent_watch_tells_a_running_process_from_an_ended_one():
    from LymphNodeMTLLib.commands.parent_watch import process_alive as _process_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    assert _process_alive(child.pid)
    child.kill()
    child.wait()
    assert not _process_alive(child.pid)
    assert _process_alive(os.getpid())


def test_service_keeps_the_copy_it_holds_when_a_ct_comes_again():
    service = _stepped_service()
    image, matrix = _small_ct(5)
    vid = service.add_volume(image, matrix)
    held = service.volumes.get(vid)
    assert service.add_volume(image.copy(), matrix, also_known_as="alias") == vid
    assert service.volumes.get(vid) is held and service.volumes.get("alias") is held
    service.close()


def test_service_engine_failure_is_a_failed_job_without_the_message(caplog):
    service = _stepped_service()
    engine = service.engines["m1"]

    def broken(case, progress=None):
        raise RuntimeError(f"cannot place seed {case.seeds[0].node_id}")

    engine.predict = broken
    vid = service.add_volume(*_small_ct(6))
    with caplog.at_level("ERROR", logger="lymphnode_mtl.server"):
        job = service.submit("predict", vid, seeds=[Seed("SECRET-7", (1.0, 1.0, 1.0))])
        assert job.finished.wait(30)
    assert job.state == "failed" and "RuntimeError" in job.error and "server log" in job.error
    assert "SECRET-7" not in job.error
    assert "RuntimeError" in caplog.text and "SECRET-7" not in caplog.text  # frames, not the message
    ok = service.submit("predict", vid, seeds=_seeds(1))  # the worker lives on
    engine.predict = SteppedEngine.predict.__get__(engine)
    engine.permits.release()
    assert ok.finished.wait(30) and ok.state == "done"
    service.close()


# --- the HTTP layer in-process (plain ASGI calls, no socket) --------------------------------------
def _asgi(app, method, path, body=b"", headers=(), sent=None):
    """(status, JSON) of one request straight into the ASGI app; `sent` collects its ASGI messages."""
    import asyncio

    sent = [] if sent is None else sent
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
             "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(data or b"{}")


def test_a_server_off_loopback_does_not_read_files(tmp_path):
    from LymphNodeMTLLib.server.app import create_app

    service = _stepped_service()
    app = create_app(service, token=TOKEN, allow_from_file=False)
    auth = [("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json")]
    status, body = _asgi(app, "POST", f"/v1/volumes/{'0' * 64}/from-file",
                         json.dumps({"path": str(tmp_path / "ct.nrrd")}).encode(), auth)
    assert status == 403 and "loopback" in body["error"]
    status, body = _asgi(app, "GET", "/v1/health", headers=auth)
    assert status == 200 and body["from_file"] is False
    service.close()


def test_an_unexpected_error_is_a_one_line_500_without_its_message(caplog):
    from LymphNodeMTLLib.server.app import create_app

    service = _stepped_service()

    def broken():
        raise KeyError("SECRET-" + str(3 * 3))  # the value, unlike this line, is not in the source

    service.models = broken  # health calls it
    app = create_app(service)
    with caplog.at_level("INFO", logger="lymphnode_mtl.server"):
        status, body = _asgi(app, "GET", "/v1/health")
    assert status == 500 and "KeyError" in body["error"] and "\n" not in body["error"]
    assert "SECRET-9" not in body["error"] and "SECRET-9" not in caplog.text
    assert "GET /v1/health 500" in caplog.text
    service.close()


def test_an_upload_the_client_abandons_is_one_info_line_and_stores_nothing(caplog):
    """A cancelled upload: the client goes away mid-body. One access line says so; no error, no
    traceback, no CT kept."""
    import asyncio
    import logging

    from LymphNodeMTLLib.server.app import create_app

    service = _stepped_service()
    image, matrix = np.zeros((8, 8, 8), np.int16), np.eye(4)
    vid = protocol.volume_id(image, matrix)
    headers = [(k.lower().encode(), v.encode()) for k, v in protocol.volume_headers(image, matrix).items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT",
             "scheme": "http", "path": f"/v1/volumes/{vid}", "raw_path": f"/v1/volumes/{vid}".encode(),
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5),
             "headers": headers + [(b"content-length", str(image.nbytes).encode())]}
    messages = iter([{"type": "http.request", "body": image.tobytes()[:100], "more_body": True},
                     {"type": "http.disconnect"}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    with caplog.at_level(logging.INFO, logger="lymphnode_mtl.server"):
        asyncio.run(create_app(service)(scope, receive, send))
    lines = [r for r in caplog.records if r.name == "lymphnode_mtl.server"]
    assert [r.levelname for r in lines] == ["INFO"], [r.getMessage() for r in lines]
    assert "PUT /v1/volumes/{volume_id} client disconnected" in lines[0].getMessage()
    assert sent == [] and not service.has_volume(vid)
    service.close()
