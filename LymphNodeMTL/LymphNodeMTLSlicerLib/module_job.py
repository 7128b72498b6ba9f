"""One Apply, Re-classify or refinement in flight: the server job plus what to do with its results, ticked
from the main thread (the widget's QTimer, or the wait loop of a script).

Results are applied on the main thread, only once the server says done, and only when every node
the job reads or writes is still in the scene: a node deleted meanwhile ends the job with a message
and nothing is applied. A failed or cancelled job changes nothing (what its planning placed in the
scene, such as a refinement's new prompt point, is taken away again).
"""

from LymphNodeMTLLib.server.job_steps import CANCELLED, DONE, FAILED, FINISHED

from .server_client import STARTING


class JobCancelled(Exception):
    """The user (or a script) cancelled the job; nothing was changed."""


class JobFailed(RuntimeError):
    """The job ended without results; the message says why and what to do."""


class ModuleJob:
    def __init__(self, serverJob, apply, watchedNodes: dict, label: str, discard=None):
        """apply(results) -> RunSummary; watchedNodes: role -> MRML node (None: not used);
        discard() undoes, once, what planning put in the scene (a placed prompt) when the job
        ends without applying its results."""
        self.serverJob = serverJob
        self._apply = apply
        self._discard = discard
        self._watched = {role: node for role, node in watchedNodes.items() if node is not None}
        self.label = label
        self.state = STARTING  # results are applied by the first tick after the server is done
        self.summary = None
        self.error = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def progress(self):
        return self.serverJob.progress

    def removedNodes(self) -> list:
        """Roles of the watched nodes that are no longer in the scene."""
        return [role for role, node in self._watched.items()
                if node.GetScene() is None or not node.GetScene().IsNodePresent(node)]

    def tick(self) -> None:
        if self.finished:
            return
        removed = self.removedNodes()
        if removed:
            self.serverJob.cancel()
            self._end(FAILED, f"the {', '.join(removed)} was removed from the scene while the job ran: "
                              "nothing was applied; press Apply again")
            return
        self.serverJob.tick()
        state = self.serverJob.state
        if state == DONE:
            try:
                self.summary = self._apply(self.serverJob.results)
            except Exception as error:  # e.g. the CT emptied meanwhile: say so, report no success
                self._end(FAILED, f"the results could not be applied: {error}")
                return
            self._end(DONE)
        elif state == FAILED:
            self._end(FAILED, self.serverJob.error)
        elif state == CANCELLED:
            self._end(CANCELLED)
        else:
            self.state = state

    def cancel(self) -> None:
        if not self.finished:
            self.serverJob.cancel()
            self._end(CANCELLED)

    def _end(self, state, error=None) -> None:
        self.state, self.error = state, error
        discard, self._discard = self._discard, None
        if state != DONE and discard is not None:
            discard()


class NothingToDo:
    """A server job that is done before it starts (no seed to predict, no edited mask)."""

    state = DONE
    progress = ("", 0, 0)
    results = []
    error = None
    health = {}

    def tick(self) -> None:
        pass

    def cancel(self) -> None:
        pass
