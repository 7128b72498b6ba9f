"""What the engine can say about a node's result, beside its numbers, and what each status means.

Every node carries exactly one status. Only `ok` and `low_agreement` nodes have a usable mask and
therefore a probability and a label; for the others the probability is left unknown (NaN) and the
label is UNKNOWN_LABEL, so no output can show a confident-looking number for a node the engine could
not segment. The predicates below are the one place every output (report, CSV, DICOM SEG, segment
tags, the Slicer table) asks what a status means. An empty status (a table or segment written before
statuses existed) reads as `ok`.
"""

OK = "ok"
TOUCHES_FIELD_OF_VIEW = "touches_field_of_view"  # the mask is still cut at the widest view (or the CT's edge)
EMPTY_MASK = "empty_mask"
SEED_NOT_IN_SOFT_TISSUE = "seed_not_in_soft_tissue"
LOW_AGREEMENT = "low_agreement"  # the mask is unstable under a threshold change: review first
# at follow-up (inference/node_carrying.py): a baseline node with no node where it went, and one
# whose surroundings the follow-up does not match well enough to be sure it is the same node
NOT_FOUND = "not_found"
REGISTRATION_UNCERTAIN = "registration_uncertain"

ALL = (OK, TOUCHES_FIELD_OF_VIEW, EMPTY_MASK, SEED_NOT_IN_SOFT_TISSUE, LOW_AGREEMENT, NOT_FOUND,
       REGISTRATION_UNCERTAIN)
HAS_USABLE_MASK = (OK, LOW_AGREEMENT, REGISTRATION_UNCERTAIN)
UNKNOWN_LABEL = -1  # predicted_label of a node without a usable mask


def has_usable_mask(status: str) -> bool:
    """Whether a node with this status has a mask to trust, hence a probability and a label."""
    return (status or OK) in HAS_USABLE_MASK


def needs_review(status: str) -> bool:
    """Whether a reader should look at the node before the others: any status but ok."""
    return (status or OK) != OK
