"""`lymphnode-mtl predict`: one CT (`--volume`, predict.py) or a cohort manifest of them
(`--manifest`, predict_cohort.py); this module only puts the two side by side on one command."""

from __future__ import annotations

from . import predict, predict_cohort
from .cohort_options import add_cohort_arguments, refuse_cohort_options

EPILOG = predict.EPILOG + predict_cohort.EPILOG


def add_arguments(p) -> None:
    inputs = p.add_mutually_exclusive_group(required=True)
    predict.add_arguments(p, inputs)
    add_cohort_arguments(p, inputs)


def run(args) -> int | None:
    if args.manifest:
        return predict_cohort.run(args)
    refuse_cohort_options(args)
    return predict.run(args)
