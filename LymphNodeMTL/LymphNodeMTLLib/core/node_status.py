"""What the engine can say about a node's result, beside its numbers.

Every node carries exactly one status. Only `ok` and `low_agreement` nodes have a usable mask and
therefore a probability and a label; for the others the probability is left unknown (NaN), so no
output can show a confident-looking number for a node the engine could not segment.
"""

OK = "ok"
TOUCHES_FIELD_OF_VIEW = "touches_field_of_view"  # the mask is still cut at the widest view (or the CT's edge)
EMPTY_MASK = "empty_mask"
SEED_NOT_IN_SOFT_TISSUE = "seed_not_in_soft_tissue"
LOW_AGREEMENT = "low_agreement"  # test-time augmentation passes disagree: review first

ALL = (OK, TOUCHES_FIELD_OF_VIEW, EMPTY_MASK, SEED_NOT_IN_SOFT_TISSUE, LOW_AGREEMENT)
HAS_USABLE_MASK = (OK, LOW_AGREEMENT)
