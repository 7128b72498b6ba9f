"""The server's OpenAPI document (/openapi.json) against what the server really serves and answers.

In-process: every route the app serves is in the document with the statuses it answers, the upload
is declared as the clients send it, and the header patterns are the parser's. Then Schemathesis
(the pinned version of pyproject.toml's test extra) with every check, in its examples, coverage,
fuzzing and stateful phases, against a real `lymphnode-mtl serve` on loopback, bounded in examples;
its widenings, and why, are in Testing/schemathesis.toml. No job it can send reaches the engine: a
job needs a CT on the server, and no generated upload is one (it would have to hash to its URL).
"""

from __future__ import annotations

import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from LymphNodeMTLLib.server import protocol
from LymphNodeMTLLib.server.app import OPENAPI_PATH, create_app
from LymphNodeMTLLib.server.client import InferenceClient
from LymphNodeMTLLib.server.launcher import start_server
from test_server import TOKEN, _asgi, _stepped_service

SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")
FUZZ_EXAMPLES = 8  # per operation and phase: the suite's bound (the full run in docs/server-api.md)
FUZZ_SEED = 20261205  # the suite explores the same requests every time
FUZZ_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def service():
    s = _stepped_service()
    yield s
    s.close()


@pytest.fixture(scope="module")
def schema(service):
    app = create_app(service, token=TOKEN)
    status, document = _asgi(app, "GET", OPENAPI_PATH, headers=[("Authorization", f"Bearer {TOKEN}")])
    assert status == 200
    return app, document


def _operations(document):
    return {(method.upper(), path): op for path, ops in document["paths"].items() for method, op in ops.items()}


def test_every_route_the_app_serves_is_in_the_schema_with_its_statuses(schema):
    app, document = schema
    operations = _operations(document)
    served = {(method, route.path) for route in app.state.served_routes if route.path != OPENAPI_PATH
              for method in route.methods}
    assert served and served == set(operations)
    error_body = {"$ref": "#/components/schemas/ErrorOut"}
    for (method, path), op in operations.items():
        statuses = set(op["responses"])
        assert {"401", "500"} <= statuses, (method, path)  # the guard's, on every route
        assert any(s.startswith("2") for s in statuses), (method, path)
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and method != "HEAD":
                assert response["content"]["application/json"]["schema"] == error_body, (method, path, status)
        assert ("422" in statuses) == _can_fail_validation(op), (method, path)
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert "HTTPValidationError" not in document["components"]["schemas"]  # never sent by this server


def _can_fail_validation(op) -> bool:
    """A JSON body, a query parameter or a constrained path parameter: FastAPI may refuse it (422)."""
    constrained = [p for p in op.get("parameters", []) if p["in"] == "query"
                   or (p["in"] == "path" and p["schema"].get("pattern"))]
    return bool(constrained) or "application/json" in op.get("requestBody", {}).get("content", {})


def test_the_schema_examples_are_requests_the_server_takes(schema):
    from LymphNodeMTLLib.server import api_models

    _, document = schema
    examples = {name: body["examples"] for name, body in document["components"]["schemas"].items() if "examples" in body}
    assert examples
    for name, bodies in examples.items():
        for body in bodies:
            getattr(api_models, name).model_validate(body)


def test_without_a_token_the_schema_asks_for_none(service):
    status, document = _asgi(create_app(service), "GET", OPENAPI_PATH)
    assert status == 200 and "security" not in document
    assert all("401" not in op["responses"] for op in _operations(document).values())


def test_the_upload_is_declared_as_the_clients_send_it(schema):
    _, document = schema
    upload = _operations(document)[("PUT", "/v1/volumes/{volume_id}")]
    assert list(upload["requestBody"]["content"]) == ["application/octet-stream"]
    headers = {p["name"]: p for p in upload["parameters"] if p["in"] == "header"}
    image = np.zeros((3, 4, 5), np.int16)
    sent = protocol.volume_headers(image, np.diag([0.7, 0.7, 2.5, 1.0]) + np.eye(4, k=3) * -123.25)
    assert set(headers) == set(sent)
    for name, value in sent.items():  # what the clients send is what the schema allows
        assert headers[name]["required"] and re.search(headers[name]["schema"]["pattern"], value), name


@pytest.mark.parametrize("name, value", [
    ("X-LNM-Shape", "01,2,3"), ("X-LNM-Shape", "1,2"), ("X-LNM-Shape", "1234567,1,1"), ("X-LNM-Shape", " 1,2,3"),
    ("X-LNM-Dtype", "int8"), ("X-LNM-IJK-To-RAS", ",".join(["1"] * 15)), ("X-LNM-IJK-To-RAS", ",".join(["1_0"] * 16)),
    ("X-LNM-IJK-To-RAS", ",".join(["nan"] * 16)),
])
def test_header_values_outside_the_schema_are_refused_by_the_parser(name, value):
    headers = {"X-LNM-Shape": "2,2,2", "X-LNM-Dtype": "int16", "X-LNM-IJK-To-RAS": "1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1"}
    protocol.parse_volume_headers(*headers.values())  # the valid set parses
    assert not re.search(protocol.HEADER_PATTERNS[name], value)
    headers[name] = value
    with pytest.raises(Exception, match=name):
        protocol.parse_volume_headers(*headers.values())


def test_a_method_a_path_does_not_take_is_405_with_every_method_it_does(schema):
    app, _ = schema
    auth = [("Authorization", f"Bearer {TOKEN}")]
    for method, path, allowed in (("PATCH", "/v1/health", "GET"), ("POST", f"/v1/volumes/{'0' * 64}", "HEAD, PUT"),
                                  ("PUT", "/v1/jobs/abc", "DELETE, GET")):
        sent = []
        status, body = _asgi(app, method, path, headers=auth, sent=sent)
        start = next(m for m in sent if m["type"] == "http.response.start")
        assert status == 405 and "not allowed" in body["error"]
        assert dict(start["headers"])[b"allow"] == allowed.encode(), path


def test_schemathesis_finds_nothing_against_a_real_server(tmp_path):
    pytest.importorskip("schemathesis")
    (tmp_path / "token.txt").write_text(TOKEN)
    with open(tmp_path / "server.log", "w") as log, start_server(
            ["--port", "0", "--device", "cpu", "--no-warm-up", "--token-file", str(tmp_path / "token.txt"),
             "--max-upload-mb", "1"], stderr=log, timeout=120) as server:
        assert server.url, (tmp_path / "server.log").read_text(encoding="utf-8", errors="replace")
        client = InferenceClient(server.url, token=TOKEN)
        assert client.health()["status"] == "ok"
        client.close()
        run = subprocess.run(
            [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
             "--config-file", str(SCHEMATHESIS_CONFIG), "run", server.url + OPENAPI_PATH,
             "-H", f"Authorization: Bearer {TOKEN}", "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
             "--max-examples", str(FUZZ_EXAMPLES), "--seed", str(FUZZ_SEED), "--workers", "1", "--no-color"],
            cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=FUZZ_TIMEOUT_S,
            # its report has non-ASCII marks: UTF-8 whatever the machine's locale (CI's may be C)
            env=dict(os.environ, PYTHONUTF8="1", PYTHONIOENCODING="utf-8"))
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    summary = report.strip().splitlines()[-1]
    assert re.search(r"\b(passed|warnings?) in\b", summary) and "failure" not in summary, report[-3000:]
    tested = re.search(r"(\d+) generated, (\d+) passed", report)
    assert tested and int(tested[2]) == int(tested[1]) > 50, report[-3000:]
    assert "unhandled" not in (tmp_path / "server.log").read_text(encoding="utf-8", errors="replace")  # no 500 behind a passing check
