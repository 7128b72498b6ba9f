"""The module's jobs against a REAL inference server process on loopback, on real MRML: cancel, a
server killed mid-job, output nodes deleted mid-job, wrong or missing tokens, malformed requests,
and replies that arrive from an event loop. (The same module inside a real PythonQt, where the main
thread holds the GIL while Qt idles: test_pythonqt_server.py.)

Every failure must end the job with one line saying what to do, and leave the scene as it was.
"""

import os
import signal
import time
import types

import numpy as np
import pytest
from slicer_harness import import_slicer_or_skip, segment_tag

import_slicer_or_skip()
import slicer_module_stubs  # noqa: E402
from LymphNodeMTLLib.core.segment_tags import TAG_PROBABILITY  # noqa: E402
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case  # noqa: E402
from LymphNodeMTLLib.server import protocol  # noqa: E402
from LymphNodeMTLLib.server.job_steps import Request  # noqa: E402
from LymphNodeMTLSlicerLib import server_client  # noqa: E402
from LymphNodeMTLSlicerLib.module_job import JobCancelled, JobFailed  # noqa: E402

lnmtl = slicer_module_stubs.import_module_file()
TICK_S = 0.1  # the widget's QTimer interval
posix_only = pytest.mark.skipif(os.name == "nt", reason="needs POSIX signals")


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom_case(np.random.default_rng(5), 3, spacing=(1.0, 1.0, 2.0),
                                 direction=np.eye(3), field_of_view_mm=(112.0, 112.0, 80.0))


@pytest.fixture(scope="module")
def logic():
    return slicer_module_stubs.warm_logic(lnmtl)


def _inputs(phantom, count=None):
    import slicer

    volume = slicer.util.addVolumeFromArray(np.round(phantom.image).astype(np.int16),
                                            phantom.geometry.ijk_to_ras, name="Phantom CT")
    markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seeds")
    for node in phantom.nodes[:count]:
        markups.AddControlPoint(*node.seed_ras, node.node_id)
    return volume, markups


def _scene_counts(scene):
    return {c: scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLSegmentationNode", "vtkMRMLTableNode")}


def _snapshot(logic, seg_node, table_node):
    segmentation = seg_node.GetSegmentation()
    tags = {k: segment_tag(segmentation.GetSegment(sid), TAG_PROBABILITY)
            for k, sid in logic.lymphNodeSegments(seg_node).items()}
    return tags, repr(logic.tableRows(table_node)), segmentation.GetNumberOfSegments()


def _tick_until(job, states, timeout=120.0):
    end = time.monotonic() + timeout
    while job.serverJob.state not in states and not job.finished:
        assert time.monotonic() < end, f"job stuck in {job.serverJob.state}"
        job.tick()
        time.sleep(0.01)


def _run(job, idle, timeout=120.0):
    end = time.monotonic() + timeout
    while True:
        job.tick()
        if job.finished:
            return
        assert time.monotonic() < end, "job did not finish"
        idle()


# --- cancel ------------------------------------------------------------------------------------
def test_cancel_deletes_the_server_job_and_changes_nothing(mrml_scene, phantom, logic):
    volume, markups = _inputs(phantom)
    before = _scene_counts(mrml_scene)
    job = logic.process(volume, markups, device="cpu", waitForCompletion=False)
    _tick_until(job, ("polling",))
    job_id = job.serverJob.jobId
    job.cancel()
    assert job.finished and job.state == "cancelled" and job.summary is None and job.error is None
    for _ in range(5):  # later ticks never apply anything
        job.tick()
    assert _scene_counts(mrml_scene) == before
    state = _server_job_state(logic, job_id)
    assert state == "cancelled"
    with pytest.raises(JobCancelled):
        logic.waitForJob(job)


def _server_job_state(logic, job_id):
    server = logic.localServer()
    replies = []
    server_client.ServerConnection(server.url, server.token).send(
        Request("GET", f"/v1/jobs/{job_id}"), replies.append)
    return replies[0].json().get("state")


# --- output nodes deleted while the job runs --------------------------------------------------------
def test_output_node_deleted_mid_job_is_detected_and_nothing_is_applied(mrml_scene, phantom, logic):
    volume, markups = _inputs(phantom, count=2)
    first = logic.process(volume, markups, device="cpu")
    seg_node = first.segmentationNode
    segments_before = logic.lymphNodeSegments(seg_node)
    markups.AddControlPoint(*phantom.nodes[2].seed_ras, phantom.nodes[2].node_id)
    job = logic.process(volume, markups, seg_node, first.tableNode, device="cpu", waitForCompletion=False)
    _tick_until(job, ("polling",))
    mrml_scene.RemoveNode(first.tableNode)
    _run(job, lambda: time.sleep(TICK_S))
    assert job.state == "failed" and job.summary is None
    assert "output table was removed" in job.error and "nothing was applied" in job.error
    assert logic.lymphNodeSegments(seg_node) == segments_before  # no segment for the new seed
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0


# --- wrong or missing token ----------------------------------------------------------------------
@pytest.mark.parametrize("token", ["wrong-token", ""])
def test_wrong_or_missing_token_is_refused_and_nothing_is_applied(mrml_scene, phantom, logic, token):
    server = logic.localServer()
    assert server.token  # the local server is started with a token of its own
    volume, markups = _inputs(phantom)
    before = _scene_counts(mrml_scene)
    remote = lnmtl.LymphNodeMTLLogic()
    remote.setServer(server.url, token)
    with pytest.raises(JobFailed) as failure:
        remote.process(volume, markups, device="cpu")
    message = str(failure.value)
    assert "refused" in message and "401" in message and "token" in message and "\n" not in message
    assert _scene_counts(mrml_scene) == before


def test_a_server_that_is_not_there_gives_one_clear_line(mrml_scene, phantom):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    volume, markups = _inputs(phantom, count=1)
    remote = lnmtl.LymphNodeMTLLogic()
    remote.setServer(f"http://127.0.0.1:{port}", "token")
    with pytest.raises(JobFailed) as failure:
        remote.process(volume, markups)
    assert f"127.0.0.1:{port}" in str(failure.value) and "\n" not in str(failure.value)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


# --- malformed requests ------------------------------------------------------------------------------
def test_malformed_requests_get_a_4xx_with_one_line(logic):
    server = logic.localServer()
    connection = server_client.ServerConnection(server.url, server.token)
    image = np.zeros((4, 5, 6), np.int16)
    good_id = protocol.volume_id(image, np.eye(4))
    headers = protocol.volume_headers(image, np.eye(4))
    cases = {
        "short upload": Request("PUT", f"/v1/volumes/{good_id}", b"\0" * 10, headers),
        "wrong volume id": Request("PUT", f"/v1/volumes/{'0' * 64}", bytes(protocol.volume_bytes(image)), headers),
        "bad shape header": Request("PUT", f"/v1/volumes/{good_id}", bytes(protocol.volume_bytes(image)),
                                    dict(headers, **{protocol.HEADER_SHAPE: "4,5"})),
        "not JSON": Request("POST", "/v1/jobs", b"{seeds", {"Content-Type": "application/json"}),
        "unknown kind": Request.with_json("POST", "/v1/jobs", {"volume_id": good_id, "kind": "guess"}),
        "unknown CT": Request.with_json("POST", "/v1/jobs", {"volume_id": "f" * 64, "kind": "predict",
                                                             "seeds": [{"id": "1", "ras": [0, 0, 0]}]}),
        "bad mask": Request.with_json("POST", "/v1/jobs", {"volume_id": good_id, "kind": "classify", "masks": [
            {"id": "1", "seed_ras": [0, 0, 0], "bbox_start_kji": [0, 0, 0], "bbox_stop_kji": [2, 2, 2],
             "mask": "!!"}]}),
        "unknown job": Request("GET", "/v1/jobs/no-such-job"),
    }
    for what, request in cases.items():
        replies = []
        connection.send(request, replies.append)
        (reply,) = replies
        assert 400 <= reply.status < 500, (what, reply.status)
        line = reply.json().get("error")
        assert isinstance(line, str) and line.strip() and "\n" not in line, (what, line)


# --- the server dies mid-job --------------------------------------------------------------------------
@posix_only
def test_server_killed_mid_job_fails_clearly_leaves_the_scene_and_restarts_on_next_apply(
        mrml_scene, phantom, logic):
    volume, markups = _inputs(phantom, count=2)
    first = logic.process(volume, markups, device="cpu")
    snapshot = _snapshot(logic, first.segmentationNode, first.tableNode)
    counts = _scene_counts(mrml_scene)
    server = logic.localServer()
    old_pid = server.pid

    markups.AddControlPoint(*phantom.nodes[2].seed_ras, phantom.nodes[2].node_id)
    job = logic.process(volume, markups, first.segmentationNode, first.tableNode, device="cpu",
                        waitForCompletion=False)
    _tick_until(job, ("polling",))
    os.kill(old_pid, signal.SIGKILL)
    _run(job, lambda: time.sleep(TICK_S))
    assert job.state == "failed" and job.summary is None
    assert "local inference server stopped" in job.error and "Apply again" in job.error
    assert "\n" not in job.error
    assert _snapshot(logic, first.segmentationNode, first.tableNode) == snapshot
    assert _scene_counts(mrml_scene) == counts

    again = logic.process(volume, markups, first.segmentationNode, first.tableNode, device="cpu")
    assert again.updatedIds == [phantom.nodes[2].node_id]
    assert server.pid != old_pid and server.isAlive()


# --- replies that arrive later, from the event loop (as QNetworkAccessManager delivers them) -------
class DeferredTransport:
    """The stdlib transport, but each reply is handed over only when the 'event loop' runs
    (`pump`), never inside send(): the order of events the Qt transport produces."""

    def __init__(self):
        self._inner = server_client.BlockingTransport()
        self.pending = []
        self.aborted = 0

    def send(self, baseUrl, method, path, headers=None, body=None, onReply=None, timeout=30.0):
        replies = []
        self._inner.send(baseUrl, method, path, headers, body, replies.append, timeout)
        handle = types.SimpleNamespace(reply=replies[0], onReply=onReply)
        self.pending.append(handle)
        return handle

    def abort(self, handle):
        """As Qt 5.15's QNetworkReply.abort(): the reply arrives inside the call."""
        self.aborted += 1
        self.pending.remove(handle)
        if handle.onReply:
            handle.onReply(server_client.Reply(0, None, "Operation canceled"))

    def pump(self):
        pending, self.pending = self.pending, []
        for handle in pending:
            if handle.onReply:
                handle.onReply(handle.reply)


def test_jobs_work_when_replies_arrive_from_the_event_loop(mrml_scene, phantom, logic):
    volume, markups = _inputs(phantom)
    deferred = DeferredTransport()
    logic_async = lnmtl.LymphNodeMTLLogic()
    logic_async.server.transport = deferred
    logic_async.server.idle = lambda: (deferred.pump(), time.sleep(TICK_S))
    summary = logic_async.process(volume, markups, device="cpu")
    assert summary.updatedIds == [n.node_id for n in phantom.nodes]

    # Cancel with a poll in flight: that request is aborted, the job is deleted, nothing applied.
    markups.RemoveAllControlPoints()
    markups.AddControlPoint(*np.add(phantom.nodes[0].seed_ras, (1.5, 0.0, 0.0)), "moved")
    job = logic_async.process(volume, markups, summary.segmentationNode, summary.tableNode,
                              device="cpu", waitForCompletion=False)
    end = time.monotonic() + 60
    while not (job.serverJob.state == "polling" and deferred.pending):
        assert time.monotonic() < end and not job.finished
        job.tick()
        if not (job.serverJob.state == "polling" and deferred.pending):
            deferred.pump()
    segments = summary.segmentationNode.GetSegmentation().GetNumberOfSegments()
    job.cancel()
    assert deferred.aborted == 1
    deferred.pump()  # the aborted poll's reply, then the DELETE's
    deferred.pump()
    assert job.state == "cancelled" and job.summary is None and job.error is None
    assert summary.segmentationNode.GetSegmentation().GetNumberOfSegments() == segments
    assert _server_job_state(logic, job.serverJob.jobId) == "cancelled"


# --- the local server ends with its parent, even one that never quits cleanly ----------------------
@posix_only
def test_local_server_stops_when_its_parent_dies_without_quitting(tmp_path):
    import subprocess
    import sys

    parent_code = (
        "import sys, time\n"
        "from LymphNodeMTLSlicerLib.server_process import LocalServer\n"
        "server = LocalServer()\n"
        "server.ensure('cpu', None)\n"
        "assert server.waitUntilReady() == 'ready', server.error\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True,
                              cwd=str(slicer_module_stubs.MODULE_DIR))
    try:
        server_pid = int(parent.stdout.readline())
    finally:
        parent.kill()  # as a crash would: no aboutToQuit, no atexit
        parent.wait()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(server_pid, signal.SIGKILL)
    pytest.fail("the local server outlived its parent by 30 s")
