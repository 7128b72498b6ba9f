"""What every cohort job that runs the engine shares (predict's, follow-up's): the model, device and
output options given once for the whole cohort, the model's identity in run.json, and one engine
per process, reused case after case."""

from __future__ import annotations

from dataclasses import dataclass

from .cohort_runner import CohortJob


def model_identity(model) -> dict:
    """The run.json fields that name the model (any job with a model folder shares them): the
    folder is checked whole here, once, before any case runs."""
    from ..network.model_store import default_model_dir, load_model

    loaded = load_model(model or default_model_dir())
    return {"model_id": loaded.config.model_id, "weights_sha256": loaded.weights_sha256}


@dataclass
class EngineJob(CohortJob):
    """A cohort job around a NodeEngine; subclasses add the per-case work (run_case)."""

    model: str | None = None
    device: str = "auto"
    batch_size: int | None = None
    dicom_seg: bool = False
    report: bool = False
    uncertainty: bool = True

    def identity(self) -> dict:
        return model_identity(self.model)

    def start(self, threads: int | None) -> None:
        import SimpleITK as sitk
        import torch

        from ..inference.engine import NodeEngine

        if threads is not None:
            # the process's share of the CPUs, for the network and for SimpleITK's filters and
            # registrations alike (each would take every core by default, times the workers)
            torch.set_num_threads(threads)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        self._engine = NodeEngine(self.model, self.device, self.batch_size, uncertainty=self.uncertainty)

    def engine_for_case(self):
        """The process's engine, its timings emptied: a case's run.json times that case alone."""
        self._engine.timings.clear()
        return self._engine
