"""`lymphnode-mtl follow-up`: one pair of CTs (`--baseline`, follow_up.py) or a cohort manifest of
them (`--manifest`, follow_up_cohort.py); this module only puts the two side by side on one command."""

from __future__ import annotations

from . import follow_up, follow_up_cohort
from .cohort_options import add_cohort_arguments, refuse_cohort_options

EPILOG = follow_up.EPILOG + follow_up_cohort.EPILOG


def add_arguments(p) -> None:
    inputs = p.add_mutually_exclusive_group(required=True)
    follow_up.add_arguments(p, inputs)
    add_cohort_arguments(p, inputs)


def run(args) -> int | None:
    if args.manifest:
        return follow_up_cohort.run(args)
    refuse_cohort_options(args)
    return follow_up.run(args)
