"""Refining a node inside a real PythonQt, as inside Slicer: run by ../shared/tools/pythonqt's
run_host.sh (see test_pythonqt_refine.py), with this interpreter's site-packages, the module folder
and Testing/ on the path.

There Qt's event loop runs in C++ and the main thread holds the GIL while it idles (PythonQt's
thread support is off, as in Slicer). `slicer` is slicer-core's real MRML, with slicer.app set to
the host's QApplication, so the module takes the paths it takes inside Slicer: the local inference
server is a QProcess started through PythonSlicer, every request goes through Qt's
QNetworkAccessManager, and each job advances only on the ticks of a 100 ms QTimer. No Python
thread is started.

Steps: Apply; a positive and a negative click (segment, row and click list follow); Undo twice
(exactly back); a long axis that draws a new node; a click cancelled while its request is out (its
point taken away). One line per step, then `pythonqt refine scenario: ok` and exit code 0 (else
the traceback and exit code 1).
"""

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
from LymphNodeMTLSlicerLib import prompt_markups  # noqa: E402
from slicer_harness import SlicerHarness  # noqa: E402

TICK_MS = 100  # the module widget's poll interval


class Scenario:
    """The steps as a generator of jobs: each job is ticked by the QTimer until it (or the step's
    own condition) is done, then handed back to the generator."""

    def __init__(self):
        self.harness = SlicerHarness().__enter__()
        self.logic = lnmtl.LymphNodeMTLLogic()
        self.phantom = generate_phantom_case(np.random.default_rng(13), 2, spacing=(1.0, 1.0, 2.0),
                                             direction=np.eye(3), field_of_view_mm=(96.0, 96.0, 64.0))
        self.volume = slicer.util.addVolumeFromArray(np.round(self.phantom.image).astype(np.int16),
                                                     self.phantom.geometry.ijk_to_ras, name="CT")
        self.seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seeds")
        self.seeds.AddControlPoint(*self.phantom.nodes[0].seed_ras, self.phantom.nodes[0].node_id)
        self.steps = self.run()
        self.job, self.until, self.started = None, None, time.monotonic()
        self.ticks = 0
        self.timer = qt.QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.connect("timeout()", self.tick)

    def tick(self) -> None:
        self.ticks += 1
        try:
            if self.job is not None:
                self.job.tick()
                if not (self.until or (lambda job: job.finished))(self.job):
                    return
            finished, self.job = self.job, None
            self.job, self.until = self.steps.send(finished), None
            if isinstance(self.job, tuple):
                self.job, self.until = self.job
            self.started = time.monotonic()
        except StopIteration:
            print("pythonqt refine scenario: ok")
            self.finish(0)
        except Exception:
            print("pythonqt refine scenario FAILED:\n" + traceback.format_exc())
            self.finish(1)

    def finish(self, exitCode: int) -> None:
        self.timer.stop()
        self.logic.localServer().stop()
        self.harness.__exit__(None, None, None)
        qt.QApplication.instance().exit(exitCode)  # the host's exit code

    def say(self, what: str) -> None:
        print(f"{what} ({time.monotonic() - self.started:.1f} s, {self.ticks} ticks so far)", flush=True)

    def state(self, seg, table, nodeId):
        segmentId = self.logic.lymphNodeSegments(seg)[nodeId]
        segment = seg.GetSegmentation().GetSegment(segmentId)
        return (self.logic.segmentMask(seg, segmentId, self.volume).tobytes(), segment.GetColor(),
                repr(self.logic.tableRows(table)))

    def run(self):
        logic, node = self.logic, self.phantom.nodes[0]
        seedRas = np.asarray(node.seed_ras)
        job = yield logic.process(self.volume, self.seeds, device="cpu", waitForCompletion=False)
        assert job.summary is not None, job.error
        assert type(logic.server.transport).__name__ == "QtTransport", logic.server.transport
        assert type(logic.localServer()._runner).__name__ == "QProcessRunner"
        seg, table = job.summary.segmentationNode, job.summary.tableNode
        self.say(f"Apply: node {node.node_id} segmented through a QProcess server and QNetworkAccessManager")
        states = [self.state(seg, table, node.node_id)]

        for offset, positive in (((2.0, 1.0, 0.0), True), ((-9.0, 0.0, 0.0), False)):
            ras = tuple(seedRas + offset)
            job = yield logic.addClick(self.volume, seg, node.node_id, ras, positive=positive, device="cpu",
                                       waitForCompletion=False)
            assert job.summary is not None, job.error
            (result,) = job.summary.results
            states.append(self.state(seg, table, node.node_id))
            segmentId = logic.lymphNodeSegments(seg)[node.node_id]
            assert np.array_equal(logic.segmentMask(seg, segmentId, self.volume),
                                  result.full_mask(self.volume.GetImageData().GetDimensions()[::-1]))
            assert logic.tableRows(table)[node.node_id]["volume_mm3"] == round(result.volume_mm3, 2)
            assert result.extra.get("prompts") == len(states) - 1
            self.say(f"{'positive' if positive else 'negative'} click: segment and row replaced "
                     f"({result.extra.get('prompts')} click(s) followed)")
        clicks = prompt_markups.promptNode(seg, node.node_id, prompt_markups.CLICKS)
        assert [clicks.GetNthControlPointLabel(i) for i in range(clicks.GetNumberOfControlPoints())] == ["+", "-"]

        for back in (1, 0):
            logic.undo(seg, node.node_id)
            assert self.state(seg, table, node.node_id) == states[back]
            assert clicks.GetNumberOfControlPoints() == back
        self.say("Undo twice: mask, colour and table exactly as after Apply, click points taken away")

        other = np.asarray(self.phantom.nodes[1].seed_ras)
        job = yield logic.drawLine(self.volume, seg, (tuple(other - (6, 0, 0)), tuple(other + (6, 0, 0))),
                                   device="cpu", waitForCompletion=False)
        assert job.summary is not None and job.summary.updatedIds == ["L1"], job.error
        assert list(logic.tableRows(table)) == [node.node_id, "L1"]
        self.say("long axis: new node L1 drawn, its segment and row added")

        before = self.state(seg, table, node.node_id)
        job = yield (logic.addClick(self.volume, seg, node.node_id, tuple(seedRas + (2.0, 0.0, 0.0)), device="cpu",
                                    waitForCompletion=False),
                     lambda job: job.serverJob.state == "polling" or job.finished)
        assert not job.finished, "the click finished before it could be cancelled"
        job.cancel()  # a poll is out on the network: aborted (QNetworkReply.abort), the server job deleted
        assert job.state == "cancelled" and clicks.GetNumberOfControlPoints() == 0
        assert self.state(seg, table, node.node_id) == before
        self.say("click cancelled mid-request: point taken away, nothing changed")
        assert threading.active_count() == 1, threading.enumerate()  # no Python thread anywhere


scenario = Scenario()
scenario.timer.start()
