"""The command-line options every cohort command shares (`--manifest`, `--workers`, `--shard`), and
their checks: a command that runs one case per call (predict, follow-up) takes them beside its own."""

from __future__ import annotations

from ..core.errors import InputError


def add_cohort_arguments(p, inputs) -> None:
    """--manifest joins `inputs`, the mutually exclusive group of the command's single-case input
    (predict's --volume); --workers and --shard go with it."""
    from .cli import positive_int

    inputs.add_argument("--manifest", metavar="CSV",
                        help="a cohort: one case per row (see below); results go to DIR/<case_id>")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="with --manifest: run cases side by side in N processes (default 1)")
    p.add_argument("--shard", metavar="K/N",
                   help="with --manifest: run only rows K, K+N, K+2N, ... (a SLURM array task's share)")


def refuse_cohort_options(args) -> None:
    """Without --manifest, --workers and --shard mean nothing: refused rather than ignored."""
    for name in ("workers", "shard"):
        if getattr(args, name, None) is not None:
            raise InputError(f"--{name} goes with a cohort; give --manifest CSV instead of a single case")


def refuse_single_case_options(args, options) -> None:
    """With --manifest, per-case options (`options`: argparse dests) belong in the manifest."""
    given = [name for name in options if getattr(args, name, None)]
    if given:
        flag, column = "--" + given[0].replace("_", "-"), given[0]
        raise InputError(f"{flag} is the manifest's {column!r} column with --manifest; put it there for each case")


def cohort_exit_code(run) -> int:
    """0 when every case finished, 1 when any failed (a SLURM array task then shows as failed)."""
    print(run.line())
    return 1 if run.failed else 0
