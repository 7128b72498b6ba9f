"""The module's server jobs inside a real PythonQt, as inside Slicer: run by pythonqt_host (see
test_pythonqt_server.py), with this interpreter's site-packages, the module folder and Testing/ on
the path. Qt's event loop runs in C++ and the main thread holds the GIL while it idles; the local
server is a QProcess started through PythonSlicer; every request goes through QNetworkAccessManager
(QtTransport); jobs advance on the ticks of a QTimer. No Python thread is used by the module.

Steps, one line each with its figures:
- the GIL while Qt idles: a Python thread starves (so no project code may rely on one);
- Apply, with the round trip of each request;
- Follow-up: a phantom pair's baseline Apply, then the follow_up job (only the new CT uploaded);
- Cancel at five points: health, upload (of the large CT, 100 ms into it), submit and poll in
  flight, and between two polls: it returns at once, the job has no error, one DELETE is sent
  (none before a job exists), the server says the job is cancelled at once, and logs an abandoned
  upload as one line;
- the server killed (SIGKILL) while a poll is in flight, and between two polls: the job names its
  exit code and log; Apply again starts a new server;
- a server that accepts connections and never answers: the job fails at its request deadline;
- a large CT (~138 MB): the upload's time on the main thread and its round trip.
Then `pythonqt server scenario: ok` and exit code 0 (else the traceback and exit code 1).
"""

import os
import signal
import socket
import statistics
import threading
import time
import traceback

import numpy as np
import qt
import slicer

slicer.app = qt.QApplication.instance()  # as inside Slicer: Qt's network and QProcess, not the stdlib's
import slicer_module_stubs  # noqa: E402

lnmtl = slicer_module_stubs.import_module_file()
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case  # noqa: E402
from LymphNodeMTLLib.phantoms.follow_up_pair import generate_follow_up_pair  # noqa: E402
from LymphNodeMTLLib.server.client import InferenceClient  # noqa: E402
from LymphNodeMTLSlicerLib import follow_up_table  # noqa: E402
from LymphNodeMTLSlicerLib.server_client import QtTransport  # noqa: E402
from slicer_harness import SlicerHarness  # noqa: E402

TICK_MS = 100  # the module widget's poll interval
CHECK_MS = 5  # how often a step's condition is looked at
LARGE_CT_SHAPE = (264, 512, 512)  # k, j, i: int16, 138 MB


class RecordingTransport:
    """QtTransport, recording each request (method, path, sent, answered) and calling `onSend`
    hooks right after a request left (a step cancels or kills from there)."""

    def __init__(self):
        self.qt = QtTransport()
        self.log = []  # [method, path, sent_s, answered_s or None, send call s]
        self.onSend = None  # (method, path) -> None

    def send(self, baseUrl, method, path, headers=None, body=None, onReply=None, timeout=120.0):
        entry = [method, path, time.monotonic(), None, 0.0]
        self.log.append(entry)

        def answered(reply):
            entry[3] = time.monotonic()
            if onReply is not None:
                onReply(reply)

        handle = self.qt.send(baseUrl, method, path, headers, body, answered, timeout)
        entry[4] = time.monotonic() - entry[2]
        if self.onSend is not None:
            self.onSend(method, path)
        return handle

    def abort(self, handle):
        self.qt.abort(handle)

    def count(self, method, path_start=""):
        return sum(1 for m, p, *_ in self.log if m == method and p.startswith(path_start))


class Scenario:
    def __init__(self):
        self.harness = SlicerHarness().__enter__()
        self.logic = lnmtl.LymphNodeMTLLogic()
        self.transport = self.logic.server.transport = RecordingTransport()
        self.phantom = generate_phantom_case(np.random.default_rng(7), 8, spacing=(1.0, 1.0, 2.0),
                                             direction=np.eye(3), field_of_view_mm=(128.0, 128.0, 80.0))
        image = np.round(self.phantom.image).astype(np.int16)
        self.volume = slicer.util.addVolumeFromArray(image, self.phantom.geometry.ijk_to_ras, name="CT")
        self.seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seeds")
        for node in self.phantom.nodes:
            self.seeds.AddControlPoint(*node.seed_ras, node.node_id)
        self.steps = self.run()
        self.wakeAt = None  # the step's condition (predicate, deadline, what)
        self.job = None  # the job the widget's timer would tick
        self.lastTick = 0.0
        self.timer = qt.QTimer()
        self.timer.setInterval(CHECK_MS)
        self.timer.connect("timeout()", self.check)

    # --- the driver: ticks the job as the widget does, resumes the steps when their condition holds
    def check(self) -> None:
        try:
            now = time.monotonic()
            if self.job is not None and now - self.lastTick >= TICK_MS / 1000:
                self.lastTick = now
                self.job.tick()
            if self.wakeAt is not None:
                predicate, deadline, what = self.wakeAt
                if not predicate():
                    assert now < deadline, f"timed out waiting for {what}"
                    return
            self.wakeAt = next(self.steps)
        except StopIteration:
            print("pythonqt server scenario: ok", flush=True)
            self.finish(0)
        except Exception:
            print("pythonqt server scenario FAILED:\n" + traceback.format_exc(), flush=True)
            self.finish(1)

    def finish(self, exitCode: int) -> None:
        self.timer.stop()
        self.logic.localServer().stop()
        self.harness.__exit__(None, None, None)
        qt.QApplication.instance().exit(exitCode)

    def until(self, predicate, timeout_s, what):
        return (predicate, time.monotonic() + timeout_s, what)

    def sleep(self, seconds):
        end = time.monotonic() + seconds
        return self.until(lambda: time.monotonic() >= end, seconds + 1, "a pause")

    def start(self, seeds=None, volume=None):
        job = self.logic.process(volume or self.volume, seeds or self.seeds, device="cpu", waitForCompletion=False)
        self.job, self.lastTick = job, time.monotonic()
        return job

    def serverJob(self, jobId) -> dict:
        server = self.logic.localServer()
        return InferenceClient(server.url, server.token, timeout=10).job(jobId)

    # --- the steps ------------------------------------------------------------------------------
    def run(self):
        yield from self.apply()
        yield from self.followUp()
        yield from self.cancelAt("health")
        yield from self.cancelAt("upload", self.largeVolume(), delay_ms=100)  # mid-body: the server sees it go
        yield from self.largeCt()
        for point in ("submit", "poll", "between polls"):
            yield from self.cancelAt(point)
        for when in ("poll in flight", "between polls"):
            yield from self.killServer(when)
        yield from self.neverAnswering()
        log = self.logic.localServer().logPath.read_text(errors="replace")
        assert "unhandled" not in log and "Traceback" not in log, log[-3000:]
        assert threading.active_count() == 1, threading.enumerate()  # no Python thread anywhere

    def apply(self):
        for what in ("Apply (server start included)", "Apply again (warm, CT cached)"):
            first = len(self.transport.log)
            t0 = time.monotonic()
            job = self.start()
            yield self.until(lambda: job.finished, 300, what)
            assert job.summary is not None, job.error
            assert len(job.summary.updatedIds) == len(self.phantom.nodes)
            assert type(self.logic.localServer()._runner).__name__ == "QProcessRunner"
            print(f"{what}: {len(self.phantom.nodes)} nodes in {time.monotonic() - t0:.2f} s; round trips "
                  + roundTrips(self.transport.log[first:]), flush=True)

    def followUp(self):
        """Follow-up: the baseline's Apply, then through Qt the baseline CT made sure of (a volume-only
        step: the server holds it already) and the follow_up job on the follow-up CT, uploaded."""
        pair = generate_follow_up_pair(np.random.default_rng(1), 3, 0, spacing=(1.0, 1.0, 2.0), direction=np.eye(3),
                                       field_of_view_mm=(128.0, 128.0, 80.0), max_shift_mm=8.0, max_angle_deg=5.0)
        baseline, follow_up = (slicer.util.addVolumeFromArray(np.round(case.image).astype(np.int16),
                                                              case.geometry.ijk_to_ras, name=name)
                               for case, name in ((pair.baseline, "CT baseline"), (pair.follow_up, "CT follow-up")))
        seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Baseline seeds")
        for node in pair.baseline.nodes:
            seeds.AddControlPoint(*node.seed_ras, node.node_id)
        job = self.start(seeds, baseline)
        yield self.until(lambda: job.finished, 300, "the baseline's Apply")
        assert job.summary is not None, job.error
        first, t0 = len(self.transport.log), time.monotonic()
        job = self.job = self.logic.followUp(baseline, job.summary.segmentationNode, follow_up, device="cpu",
                                             waitForCompletion=False)
        yield self.until(lambda: job.finished, 300, "the follow-up job")
        assert job.summary is not None, job.error
        sent = [(method, path.split("/")[2]) for method, path, *_ in self.transport.log[first:] if method != "GET"]
        # the baseline CT is on the server since its Apply: asked for, not sent again; the follow-up CT goes up
        assert sent == [("HEAD", "volumes"), ("HEAD", "volumes"), ("PUT", "volumes"), ("POST", "jobs")], sent
        response = follow_up_table.response(job.summary.tableNode)
        assert response["category"] == pair.response.category, response
        print(f"Follow-up: {len(job.summary.updatedIds)} nodes carried in {time.monotonic() - t0:.2f} s "
              f"(the follow-up CT uploaded), response {response['category']}; round trips "
              + roundTrips(self.transport.log[first:]), flush=True)

    def cancelAt(self, point, volume=None, delay_ms=0):
        t, before, outcome = self.transport, len(self.transport.log), {}
        target = {"health": ("GET", "/v1/health"), "upload": ("PUT", "/v1/volumes/"),
                  "submit": ("POST", "/v1/jobs"), "poll": ("GET", "/v1/jobs/")}.get(point)

        def cancelNow():
            entry = t.log[-1]
            if target == ("GET", "/v1/jobs/") and entry[3] is not None and not job.finished:
                outcome.clear()  # that poll was answered before the click landed: take the next one
                return
            try:
                outcome["pending"] = (entry[0], entry[1].split("?")[0], entry[3] is None, t.qt.inFlight())
                t0 = time.perf_counter()
                job.cancel()
                outcome["ms"] = 1000 * (time.perf_counter() - t0)
            except Exception as error:  # raised again by the step
                outcome["error"] = error

        def onSend(method, path):
            if target and (method, path[:len(target[1])]) == target and not outcome:
                outcome["armed"] = True
                qt.QTimer.singleShot(delay_ms, cancelNow)  # from the event loop, as a click would

        t.onSend = onSend
        job = self.start(volume=volume)
        if target is None:  # between two polls: a poll answered, the next not yet sent
            yield self.until(lambda: job.serverJob.state == "polling" and t.count("GET", "/v1/jobs/") >= 2
                             and t.qt.inFlight() == 0 and not job.finished, 60, "a pause between polls")
            cancelNow()
        else:
            yield self.until(lambda: "ms" in outcome or "error" in outcome or job.finished, 60, f"{point} sent")
        t.onSend = None
        if "error" in outcome:
            raise outcome["error"]
        assert "ms" in outcome, f"the job ended before its {point} request was sent: {job.state} {job.error}"
        yield self.sleep(1.0)  # the replies still on their way (a POST's answer, the DELETE's)
        jobId = job.serverJob.jobId  # a POST in flight names its job only once answered
        deletes = t.count("DELETE") - sum(1 for e in t.log[:before] if e[0] == "DELETE")
        method, path, unanswered, inFlight = outcome["pending"]
        if target is not None:
            assert (method, path[:len(target[1])]) == target and unanswered and inFlight >= 1, outcome
        assert job.state == "cancelled" and job.error is None and job.summary is None, (job.state, job.error)
        assert outcome["ms"] < 50, outcome
        assert deletes == (1 if jobId else 0), (point, deletes, jobId)
        assert t.qt.inFlight() == 0
        line = f"Cancel at {point}: returned in {outcome['ms']:.1f} ms, no error, {deletes} DELETE"
        if jobId:
            state = self.serverJob(jobId)
            assert state["state"] == "cancelled" and state["progress"]["stage"] == "cancelled", state
            line += ", the server job and its progress read cancelled"
        if point == "upload":
            log = self.logic.localServer().logPath.read_text(errors="replace")
            assert "client disconnected" in log, log[-2000:]
            line += ", the server logged one line: client disconnected"
        print(line, flush=True)

    def killServer(self, when):
        t, server, killed = self.transport, self.logic.localServer(), {}
        pid = server.pid

        def kill():
            killed["pending"] = t.qt.inFlight()
            os.kill(pid, signal.SIGKILL)
            killed["at"] = time.monotonic()

        def onSend(method, path):
            # killed right as the poll leaves: a later timer may find it already answered (a poll
            # takes ~2 ms), and the death must be met while a request is waiting for its answer
            if method == "GET" and path.startswith("/v1/jobs/") and not killed:
                kill()

        job = self.start()
        if when == "poll in flight":
            t.onSend = onSend
        else:
            yield self.until(lambda: job.serverJob.state == "polling" and t.count("GET", "/v1/jobs/") >= 2
                             and t.qt.inFlight() == 0, 60, "a pause between polls")
            kill()
        ended = {}
        yield self.until(lambda: "at" in killed and job.finished and ended.setdefault("at", time.monotonic()),
                         10, "the job to fail")
        t.onSend = None
        reported = ended["at"] - killed["at"]
        assert job.state == "failed" and "stopped (exit code" in job.error and "log:" in job.error, job.error
        assert "Apply again" in job.error and "\n" not in job.error, job.error
        assert (killed["pending"] >= 1) == (when == "poll in flight"), killed
        assert reported < 1.0, reported
        print(f"Server killed, {when}: the job failed {1000 * reported:.0f} ms later: {job.error}", flush=True)
        t0 = time.monotonic()
        again = self.start(self.oneSeed())  # one node: the point is the new server
        yield self.until(lambda: again.finished, 300, "Apply again")
        assert again.summary is not None, again.error
        assert server.pid != pid and server.isAlive()
        print(f"  Apply again: a new server and {len(again.summary.updatedIds)} nodes in "
              f"{time.monotonic() - t0:.2f} s", flush=True)

    def neverAnswering(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel accepts connections; nobody ever reads or answers
        session = self.logic.server
        session.setServer(f"http://127.0.0.1:{listener.getsockname()[1]}")
        session.requestTimeoutS, default = 1.0, session.requestTimeoutS
        try:
            t0 = time.monotonic()
            job = self.start()
            ended = {}
            yield self.until(lambda: job.finished and ended.setdefault("at", time.monotonic()), 10, "the deadline")
            elapsed = ended["at"] - t0
            assert job.state == "failed" and "did not answer in time" in job.error and "Apply again" in job.error, \
                job.error
            assert 0.9 <= elapsed < 2.0, elapsed  # the deadline, plus a tick or two on a loaded machine
            assert self.transport.qt.inFlight() == 0
            print(f"A server that never answers: the job failed {elapsed:.2f} s after Apply (deadline 1 s): "
                  f"{job.error}", flush=True)
        finally:
            listener.close()
            session.setServer("local")
            session.requestTimeoutS = default

    def oneSeed(self):
        if getattr(self, "_oneSeed", None) is None:
            node = self.phantom.nodes[0]
            self._oneSeed = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "One seed")
            self._oneSeed.AddControlPoint(*node.seed_ras, node.node_id)
        return self._oneSeed

    def largeVolume(self):
        if getattr(self, "_large", None) is None:
            image = np.round(self.phantom.image).astype(np.int16)
            large = np.full(LARGE_CT_SHAPE, int(np.median(image)), np.int16)
            large[:image.shape[0], :image.shape[1], :image.shape[2]] = image  # same grid: same seeds
            self._large = slicer.util.addVolumeFromArray(large, self.phantom.geometry.ijk_to_ras, name="Large CT")
        return self._large

    def largeCt(self):
        volume = self.largeVolume()
        first = len(self.transport.log)
        t0 = time.monotonic()
        job = self.start(self.oneSeed(), volume)
        planned = time.monotonic() - t0
        yield self.until(lambda: job.finished, 300, "the large CT's job")
        assert job.summary is not None, job.error
        (put,) = [e for e in self.transport.log[first:] if e[0] == "PUT"]
        megabytes = volume.GetImageData().GetPointData().GetScalars().GetNumberOfValues() * 2 / 1e6
        print(f"Large CT ({megabytes:.0f} MB): planning (array, hash) {planned:.2f} s and the upload call "
              f"{put[4]:.2f} s on the main thread; upload round trip {put[3] - put[2]:.2f} s; the job "
              f"{time.monotonic() - t0:.2f} s", flush=True)


def roundTrips(log) -> str:
    """Median round trip per request kind, in ms."""
    kinds = {}
    for method, path, sent, answered, _call in log:
        if answered is not None:
            route = "/".join(part if not (len(part) > 20 or "?" in part) else "{id}" for part in path.split("/"))
            kinds.setdefault(f"{method} {route}", []).append(1000 * (answered - sent))
    return ", ".join(f"{kind} {statistics.median(ms):.1f} ms (x{len(ms)})" for kind, ms in kinds.items())


def measureGil(then) -> None:
    """A Python thread that counts and sleeps 1 ms: while the main thread sleeps in Python (which
    releases the GIL) it counts freely; while Qt idles for a second with nothing Python to do it
    starves, each count needing the GIL back (PythonQt's thread support is off, as in Slicer)."""
    count, stop = [0], threading.Event()

    def tick():
        while not stop.is_set():
            count[0] += 1
            time.sleep(0.001)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    t0, c0 = time.monotonic(), count[0]
    time.sleep(0.5)
    free = (count[0] - c0) / (time.monotonic() - t0)
    t1, c1 = time.monotonic(), count[0]

    def measured():
        idle = (count[0] - c1) / (time.monotonic() - t1)
        stop.set()
        thread.join()
        print(f"GIL: a Python thread counted {free:.0f}/s while the main thread slept in Python, "
              f"{idle:.1f}/s while Qt idled", flush=True)
        if not (idle < 10 and free > 100):
            print("pythonqt server scenario FAILED: the thread was not starved while Qt idled", flush=True)
            qt.QApplication.instance().exit(1)
            return
        then()

    qt.QTimer.singleShot(2000, measured)


if __name__ == "__main__":
    measureGil(lambda: Scenario().timer.start())
