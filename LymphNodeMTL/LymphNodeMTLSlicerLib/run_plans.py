"""What one Apply or Re-classify will do (decided on the main thread before the server is asked),
and what it did (the summary the module shows)."""

from dataclasses import dataclass, field

from LymphNodeMTLLib.core.case import Case


@dataclass
class PredictionPlan:
    """Apply: `case` holds only the seeds to predict."""

    volumeNode: object
    segmentationNode: object
    tableNode: object
    case: Case
    replaceSegmentIds: dict = field(default_factory=dict)  # node id -> existing segment to overwrite
    keptIds: list = field(default_factory=list)  # existing segments left as they are
    keptEditedIds: list = field(default_factory=list)  # ... of which edited by the radiologist


@dataclass
class ReclassificationPlan:
    """Re-classify: the current (edited) masks as NodeResults, and where they came from."""

    volumeNode: object
    segmentationNode: object
    tableNode: object
    case: Case
    results: list
    segmentIds: dict  # node id -> segment id
    skippedEmptyIds: list = field(default_factory=list)


@dataclass
class RunSummary:
    segmentationNode: object
    tableNode: object
    updatedIds: list
    keptIds: list = field(default_factory=list)
    keptEditedIds: list = field(default_factory=list)
    skippedEmptyIds: list = field(default_factory=list)
    results: list = field(default_factory=list)
    verb: str = "segmented"

    def message(self) -> str:
        parts = [f"{len(self.updatedIds)} node(s) {self.verb}"]
        if self.keptIds:
            parts.append(f"{len(self.keptIds)} kept as they were")
        if self.keptEditedIds:
            parts.append(f"edited, not overwritten: {', '.join(self.keptEditedIds)}")
        if self.skippedEmptyIds:
            parts.append(f"empty, skipped: {', '.join(self.skippedEmptyIds)}")
        return "; ".join(parts) + "."
