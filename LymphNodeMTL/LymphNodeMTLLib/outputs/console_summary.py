"""What predict and demo print on stdout: the nodes as a table (the columns of nodes.csv a reader
looks at first), the files written and one line of where the time went (run.json's timings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..core import node_status
from .run_record import RECORD_NAME

# run.json timing keys, in the order a run passes them, with the name the line gives them
TIMING_STAGES = (
    ("read_inputs", "read"),
    ("first_view_total", "first view"),
    ("zoom_total", "zoom"),
    ("prompts", "prompts"),
    ("uncertainty_total", "uncertainty"),
    ("write_outputs", "write"),
)
LABEL_WORDS = {0: "benign", 1: "metastatic"}


def _interval(r) -> str | None:
    if math.isfinite(r.probability_low) and math.isfinite(r.probability_high):
        return f"{r.probability_low:.2f}-{r.probability_high:.2f}"
    return None


def table_lines(results) -> list[str]:
    """One line per node, highest probability first; a node without a probability (its status
    says why) last, with dashes, never a number. The interval column appears when a node has one."""
    with_interval = any(node_status.has_usable_mask(r.status) and _interval(r) for r in results)
    interval_head = f" {'interval':>11}" if with_interval else ""
    lines = [f"{'node':>8} {'probability':>11}{interval_head} {'label':>10} {'short mm':>9} {'long mm':>8} "
             f"{'volume mm3':>11}  status"]

    def order(r):
        return (math.isnan(r.probability), 0.0 if math.isnan(r.probability) else -r.probability)

    for r in sorted(results, key=order):
        usable = node_status.has_usable_mask(r.status) and not math.isnan(r.probability)
        probability = f"{r.probability:.3f}" if usable else "—"
        interval = f" {(_interval(r) if usable else None) or '—':>11}" if with_interval else ""
        label = LABEL_WORDS.get(int(r.predicted_label), "—") if usable else "—"
        lines.append(f"{r.node_id:>8} {probability:>11}{interval} {label:>10} {r.short_axis_mm:>9.1f} "
                     f"{r.long_axis_mm:>8.1f} {r.volume_mm3:>11.0f}  {r.status}")
    return lines


def timing_line(timings: dict) -> str:
    """`time: read 0.68 s, first view 2.85 s, ...` from run.json's timings_s (stages a run did
    not pass are left out)."""
    parts = [f"{name} {timings[key]:.2f} s" for key, name in TIMING_STAGES if key in timings]
    return "time: " + ", ".join(parts)


def print_summary(results, out_dir: Path, names) -> None:
    """The table, the files written and the timing line (from the run.json in `out_dir`)."""
    for line in table_lines(results):
        print(line)
    for name in names:
        print(f"wrote {Path(out_dir) / name}")
    record = Path(out_dir) / RECORD_NAME
    if record.is_file():
        print(timing_line(json.loads(record.read_text()).get("timings_s", {})))
