"""The lines a command prints on stderr about nodes whose result needs a reader's eye.

Nodes without a usable mask (no probability, no label) are listed with their status, and nodes
with a probability but an unstable mask (low_agreement) after them, so a run that
worked (exit code 0) never passes over such a node in silence.
"""

from __future__ import annotations

import sys

from ..core import node_status


def status_notice_lines(results) -> list[str]:
    """Nothing when every node is ok."""
    unusable = [r for r in results if not node_status.has_usable_mask(r.status)]
    uncertain = [r for r in results if r.status == node_status.LOW_AGREEMENT]
    lines = []
    if unusable:
        listed = ", ".join(f"{r.node_id} ({r.status})" for r in unusable)
        lines.append(f"warning: {len(unusable)} node{'s' * (len(unusable) != 1)} without a usable mask, "
                     f"so without a probability or label: {listed}; check the seeds, or draw the mask "
                     "and re-classify")
    if uncertain:
        listed = ", ".join(str(r.node_id) for r in uncertain)
        lines.append(f"review: {len(uncertain)} node{'s' * (len(uncertain) != 1)} with an uncertain mask "
                     f"(low_agreement): {listed}")
    return lines


def print_status_notice(results, stream=None) -> None:
    """Print status_notice_lines on `stream` (stderr)."""
    stream = stream or sys.stderr
    for line in status_notice_lines(results):
        print(line, file=stream)
