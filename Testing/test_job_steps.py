"""The job's steps (server/job_steps.py) against a scripted server, with a blocking transport (the
reply inside send) and an asynchronous one (replies later, as Qt delivers them): the order of the
requests, the CT sent only when the server lacks it, one line per failure, and cancel at every step."""

import numpy as np
from LymphNodeMTLLib.core.node_prompts import Click, NodePrompts
from LymphNodeMTLLib.io.prompt_reader import prompts_from_document
import pytest
from LymphNodeMTLLib.core.case import Seed
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.server import job_steps, protocol
from LymphNodeMTLLib.server.job_steps import FailureAdvice, RemoteJob, Reply, VolumePayload

IMAGE = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
RESULT = NodeResult("1", (0.0, 0.0, 0.0), (0, 0, 0), (1, 1, 1), np.ones((1, 1, 1), bool), probability=0.4)


class ScriptedServer:
    """Answers each request from a script of (method, path start) -> Reply, and logs what came."""

    def __init__(self, held=False, answers=None):
        self.held = held
        self.polls = [{"state": "running", "progress": {"stage": "nodes", "done": 1, "total": 2}},
                      {"state": "done", "progress": {"stage": "nodes", "done": 2, "total": 2},
                       "results": [protocol.result_to_json(RESULT)]}]
        self.answers = answers or {}
        self.log = []

    def answer(self, request) -> Reply:
        self.log.append(f"{request.method} {request.path}")
        for (method, prefix), reply in self.answers.items():
            if request.method == method and request.path.startswith(prefix):
                return reply
        if request.path == "/v1/health":
            return Reply(200, {"api_version": protocol.API_VERSION, "status": "ok"})
        if request.method == "HEAD":
            return Reply(200 if self.held else 404)
        if request.method == "PUT":
            assert request.headers[protocol.HEADER_SHAPE] == "2,3,4"
            assert bytes(request.body) == IMAGE.tobytes()
            return Reply(201, {"volume_id": request.path.rsplit("/", 1)[1]})
        if request.method == "POST":
            return Reply(202, {"job_id": "J", "state": "queued"})
        if request.method == "DELETE":
            return Reply(200, {"state": "cancelled"})
        return Reply(200, self.polls.pop(0) if len(self.polls) > 1 else self.polls[0])

    def blocking(self, request, on_reply):
        on_reply(self.answer(request))


class Deferred:
    """An asynchronous transport: replies wait until `pump`, as Qt's event loop delivers them."""

    def __init__(self, server):
        self.server, self.pending, self.aborted = server, [], []

    def send(self, request, on_reply):
        handle = [request, on_reply]
        self.pending.append(handle)
        return handle

    def abort(self, handle):
        self.aborted.append(handle[0].method)
        handle[1] = lambda reply, call=handle[1]: call(Reply(0, None, "Operation canceled"))

    def pump(self):
        pending, self.pending = self.pending, []
        for request, on_reply in pending:
            on_reply(self.server.answer(request))


def _run(job):
    while not job.finished:
        job.tick()
    return job


def test_the_steps_in_order_and_the_ct_sent_once():
    server = ScriptedServer()
    job = _run(RemoteJob(server.blocking, job_steps.predict_job([Seed("1", (1.0, 2.0, 3.0))]),
                         VolumePayload(IMAGE, np.eye(4))))
    vid = protocol.volume_id(IMAGE, np.eye(4))
    assert server.log == ["GET /v1/health", f"HEAD /v1/volumes/{vid}", f"PUT /v1/volumes/{vid}", "POST /v1/jobs",
                          "GET /v1/jobs/J", "GET /v1/jobs/J"]
    assert job.state == "done" and job.uploaded and job.progress == ("nodes", 2, 2)
    assert [r.node_id for r in job.results] == ["1"] and job.results[0].probability == 0.4
    assert job.job == {"kind": "predict", "seeds": [{"id": "1", "ras": [1.0, 2.0, 3.0]}], "options": {},
                       "volume_id": vid}

    held = ScriptedServer(held=True)
    _run(RemoteJob(held.blocking, job_steps.classify_job([RESULT]), VolumePayload(IMAGE, np.eye(4))))
    assert [line.split()[0] for line in held.log] == ["GET", "HEAD", "POST", "GET", "GET"]


def test_a_ct_the_server_holds_by_id_and_only_the_ct():
    server = ScriptedServer()
    _run(RemoteJob(server.blocking, job_steps.predict_job([("a", (0, 0, 0))]), "v" * 64, poll_wait_s=10))
    assert server.log[1:3] == ["POST /v1/jobs", "GET /v1/jobs/J?wait=10"]
    only_ct = _run(RemoteJob(server.blocking, None, VolumePayload(IMAGE, np.eye(4))))
    assert only_ct.state == "done" and only_ct.results is None and server.log[-1].startswith("PUT")


def test_another_job_kind_is_only_another_body():
    server = ScriptedServer(held=True)
    prompts = [NodePrompts("a", line=((0.0, 0.0, 0.0), (9.0, 0.0, 0.0)), clicks=(Click((1.0, 1.0, 0.0), False),))]
    job = _run(RemoteJob(server.blocking, job_steps.refine_job(prompts), "v" * 64))
    assert job.state == "done" and job.job["kind"] == "refine" and job.job["volume_id"] == "v" * 64
    assert prompts_from_document(job.job["prompts"]) == {"a": prompts[0]}  # the prompts file's own form


@pytest.mark.parametrize("answers, words, status", [
    ({("GET", "/v1/health"): Reply(200, {"api_version": 99})}, "speaks API version 99, this client needs 1", 200),
    ({("GET", "/v1/health"): Reply(401, {"error": "missing or wrong token"})},
     "the server refused the request (401: missing or wrong token); give the client the server's token", 401),
    ({("PUT", "/v1/volumes"): Reply(413, {"error": "over the\nupload limit"})},
     "the server answered 413: over the upload limit", 413),
    ({("POST", "/v1/jobs"): Reply(0, None, "Connection refused")},
     "the server stopped answering (Connection refused); check that it runs and try again", 0),
    ({("GET", "/v1/jobs/J"): Reply(200, {"state": "failed", "error": "out of memory"})},
     "the server: the job failed: out of memory", 409),
    ({("GET", "/v1/jobs/J"): Reply(200, {"state": "done", "results": [{"node_id": "x"}]})},
     "the server sent results this client cannot read", 200),
])
def test_every_failure_is_one_line(answers, words, status):
    server = ScriptedServer(answers=answers)
    job = _run(RemoteJob(server.blocking, job_steps.predict_job([("a", (0, 0, 0))]),
                         VolumePayload(IMAGE, np.eye(4)), describe="the server"))
    assert job.state == "failed" and words in job.error and "\n" not in job.error
    assert job.error_status == status and job.results is None
    # a job the server created and then lost is deleted on the server
    assert ("DELETE /v1/jobs/J" in server.log) == (status in (409, 200) and "POST /v1/jobs" in server.log
                                                   and "API" not in words)


def test_advice_and_a_reason_for_an_unreachable_server_are_the_callers():
    server = ScriptedServer(answers={("GET", "/v1/health"): Reply(0, None, "reset")})
    job = _run(RemoteJob(server.blocking, {"kind": "predict"}, "v", unreachable=lambda: "it crashed",
                         advice=FailureAdvice(retry="press Apply again")))
    assert job.error == "it crashed"
    server = ScriptedServer(answers={("GET", "/v1/health"): Reply(403, {"error": "no"})})
    job = _run(RemoteJob(server.blocking, {"kind": "predict"}, "v", advice=FailureAdvice(token="set the token")))
    assert job.error.endswith("; set the token")


def test_replies_that_arrive_later_and_cancel_at_each_step():
    server = ScriptedServer()
    transport = Deferred(server)
    job = RemoteJob(transport.send, {"kind": "predict"}, VolumePayload(IMAGE, np.eye(4)), abort=transport.abort)
    job.tick()
    job.tick()  # nothing new while the health answer is awaited
    assert len(transport.pending) == 1 and job.state == "checking"
    while not job.finished:
        transport.pump()
        job.tick()
    assert job.state == "done"

    # cancelled while the POST is in flight: the POST is not aborted; its answer names the job to delete
    server = ScriptedServer(held=True)
    transport = Deferred(server)
    job = RemoteJob(transport.send, {"kind": "predict"}, "v", abort=transport.abort)
    job.tick()
    transport.pump()
    assert job.state == "submitting"
    job.cancel()
    assert transport.aborted == [] and job.state == "cancelled"
    transport.pump()
    transport.pump()
    assert server.log[-1] == "DELETE /v1/jobs/J" and job.state == "cancelled"

    # cancelled while a poll is in flight: the poll is aborted and the job deleted
    server = ScriptedServer(held=True)
    transport = Deferred(server)
    job = RemoteJob(transport.send, {"kind": "predict"}, "v", abort=transport.abort)
    while job.state != "polling":
        job.tick()
        transport.pump()
    job.tick()
    job.cancel()
    transport.pump()
    assert transport.aborted == ["GET"] and server.log[-1] == "DELETE /v1/jobs/J"
    assert job.state == "cancelled" and job.results is None


class AbortAnswersAtOnce(Deferred):
    """Qt 5.15's QNetworkReply.abort(): finished() is emitted inside abort(), status 0."""

    def abort(self, handle):
        self.aborted.append(handle[0].method)
        self.pending.remove(handle)
        handle[1](Reply(0, None, "Operation canceled"))


@pytest.mark.parametrize("step", ["checking", "uploading", "polling"])
def test_a_reply_the_abort_delivers_at_once_is_ignored(step):
    """Cancel returns at once: no question whether the server died, no error, one DELETE (none
    before the job exists)."""
    server = ScriptedServer()
    transport = AbortAnswersAtOnce(server)
    asked = []
    job = RemoteJob(transport.send, {"kind": "predict"}, VolumePayload(IMAGE, np.eye(4)), abort=transport.abort,
                    unreachable=lambda: asked.append(1))
    job.tick()
    while job.state != step:
        transport.pump()
        job.tick()
    assert transport.pending  # the step's request is out
    job.cancel()
    transport.pump()
    assert job.state == "cancelled" and job.error is None and asked == []
    assert server.log.count("DELETE /v1/jobs/J") == (1 if step == "polling" else 0)


def test_a_server_without_an_answer_is_judged_tick_by_tick(monkeypatch):
    """`unreachable` never waits: it is asked on each tick until it knows (the local process was
    seen dead) or the grace is over (then the generic line)."""
    answers = iter([None, None, "the local server stopped (exit code 9)"])
    server = ScriptedServer(answers={("GET", "/v1/jobs/J"): Reply(0, None, "Connection closed")})
    job = RemoteJob(server.blocking, {"kind": "predict"}, "v", unreachable=lambda: next(answers))
    for _ in range(3):  # health, submit and a poll without an answer in the first: asked twice so far
        job.tick()
    assert job.state == "polling" and job.error is None
    job.tick()
    assert job.state == "failed" and job.error == "the local server stopped (exit code 9)"
    assert server.log.count("GET /v1/jobs/J") == 1 and server.log[-1] == "DELETE /v1/jobs/J"

    monkeypatch.setattr(job_steps, "UNREACHABLE_GRACE_S", 0.0)
    job = _run(RemoteJob(server.blocking, {"kind": "predict"}, "v", unreachable=lambda: None))
    assert job.error.startswith("the inference server stopped answering (Connection closed)")


def test_a_request_past_its_deadline_fails_the_job_with_what_to_do():
    server = ScriptedServer(answers={("GET", "/v1/health"): Reply(0, None, "no answer within 1 s", timed_out=True)})
    job = _run(RemoteJob(server.blocking, {"kind": "predict"}, "v", unreachable=lambda: pytest.fail("asked"),
                         advice=FailureAdvice(retry="press Apply again")))
    assert job.error == ("the inference server did not answer in time (no answer within 1 s); check that it "
                         "runs and is not overloaded, then press Apply again")


def test_following_a_submitted_job():
    server = ScriptedServer()
    job = _run(RemoteJob(server.blocking, job_id="J"))
    assert server.log == ["GET /v1/jobs/J", "GET /v1/jobs/J"] and job.state == "done"
    assert job.last_job["state"] == "done"
