"""The server side of the module's Follow-up: two CTs, one job. The baseline CT is made sure of on
the server first (uploaded only when the server lacks it), then the follow_up job runs on the
follow-up CT, naming the baseline by its volume_id. Each step is an ordinary ServerJob, ticked from
the main thread like every other job; nothing is applied here.
"""

from LymphNodeMTLLib.server.job_steps import DONE

from .server_client import STARTING


class FollowUpServerJob:
    def __init__(self, startJob, baseline, followUp, body: dict):
        """startJob(volume, body) -> ServerJob (ServerSession.job); baseline, followUp: the CTs as
        VolumePayloads; body: job_steps.follow_up_job on baseline.volume_id."""
        self._startJob, self._followUp, self._body = startJob, followUp, body
        self.step = startJob(baseline, None)  # None: only make sure the server holds the CT
        self.onBaseline = True

    @property
    def state(self) -> str:
        state = self.step.state
        return STARTING if self.onBaseline and state == DONE else state

    finished = property(lambda self: self.step.finished and not (self.onBaseline and self.step.state == DONE))
    error = property(lambda self: self.step.error)
    jobId = property(lambda self: self.step.jobId)
    progress = property(lambda self: self.step.progress)
    health = property(lambda self: self.step.health)
    results = property(lambda self: None if self.onBaseline else self.step.results)

    @property
    def summary(self) -> dict:
        """The finished job's "follow_up": both time points per node, the response, the registration."""
        remote = None if self.onBaseline else self.step.remote
        return (remote.last_job.get("follow_up") if remote is not None else None) or {}

    def tick(self) -> None:
        self.step.tick()
        if self.onBaseline and self.step.state == DONE:
            self.step, self.onBaseline = self._startJob(self._followUp, self._body), False
            self.step.tick()

    def cancel(self) -> None:
        self.step.cancel()
