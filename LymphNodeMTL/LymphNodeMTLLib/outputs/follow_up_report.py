"""The follow-up report: `report.png` and a self-contained `report.html`.

A header with the suggested nodal response (core/nodal_response.py) and the target sum, then one
row per node: its axial thumbnail at baseline and at follow-up side by side (each on the slice of
its own short axis, mask outlined; a node not found is shown where it went, with no outline), and
its sizes at both times with the change and the probabilities. Thumbnails as in case_report.py.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from ..core import nodal_response as recist
from ..core.case import Case
from .case_report import (
    DPI,
    NOT_CLINICAL,
    STATUS_TEXT,
    WINDOW_HU,
    _figure,
    _png_bytes,
    _to_rgb,
    node_views,
    recist_axes,
    view_centre_and_field,
)
from .follow_up_table import change_row
from .segmentation_writer import atomic_output, probability_color, segment_name

PNG_FILE, HTML_FILE = "report.png", "report.html"
ROW_HEIGHT_IN, TEXT_WIDTH_IN = 2.0, 3.6


def response_line(response: recist.NodalResponse) -> str:
    category = response.category.replace("_", " ")
    sums = ""
    if math.isfinite(response.follow_up_sum_mm):
        sums = (f"; target sum {response.baseline_sum_mm:.1f} -> {response.follow_up_sum_mm:.1f} mm "
                f"({response.change_percent:+.0f} %)")
    return f"Suggested RECIST 1.1 nodal response: {category.upper()} ({response.reason}){sums}; to be confirmed"


def write_follow_up_report(out_dir, baseline: Case, follow_up: Case, study, model_id: str,
                           clinical_use: bool = False) -> tuple[Path, Path]:
    """Write report.png and report.html into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    header = f"LymphNodeMTL follow-up | model {model_id} | {response_line(study.response)}"
    if not clinical_use:
        header = f"{NOT_CLINICAL} | {header}"
    rows = [_render_row(baseline, follow_up, change) for change in study.changes]
    width = int((2 * ROW_HEIGHT_IN + TEXT_WIDTH_IN) * DPI)
    banner = _render_header(header, width)
    png_path, html_path = out_dir / PNG_FILE, out_dir / HTML_FILE
    with atomic_output(png_path, suffix=".png") as temporary:
        temporary.write_bytes(_png_bytes(np.concatenate([banner, *rows], axis=0)))
    page = _html(header, study, [_png_bytes(r) for r in rows])
    with atomic_output(html_path, suffix=".html") as temporary:
        temporary.write_text(page, encoding="utf-8")
    return png_path, html_path


def _render_header(text: str, width_px: int) -> np.ndarray:
    figure = _figure(width_px / DPI, 0.6)
    figure.text(0.01, 0.5, text, va="center", ha="left", fontsize=7.5, fontweight="bold", wrap=True)
    return _to_rgb(figure)


def _axial(case: Case, result, field_of_view_mm: float):
    axes = recist_axes(result)
    return node_views(case, result, axes.slice_s_mm if axes else None, field_of_view_mm)[0], axes


def _render_row(baseline: Case, follow_up: Case, change) -> np.ndarray:
    width = 2 * ROW_HEIGHT_IN + TEXT_WIDTH_IN
    figure = _figure(width, ROW_HEIGHT_IN)
    side = ROW_HEIGHT_IN / width
    # both thumbnails at one scale, so the eye compares sizes as the numbers do
    field = max(view_centre_and_field(case.geometry, result)[1]
                for case, result in ((baseline, change.baseline), (follow_up, change.follow_up)) if result is not None)
    for n, (case, result, label) in enumerate(((baseline, change.baseline, "baseline"),
                                               (follow_up, change.follow_up, "follow-up"))):
        ax = figure.add_axes((n * side + 0.004, 0.02, side - 0.008, 0.96))
        ax.set_xticks([])
        ax.set_yticks([])
        if result is None:
            ax.text(0.5, 0.5, "new at follow-up", ha="center", va="center", transform=ax.transAxes)
            continue
        view, _ = _axial(case, result, field)
        h = view.half_width_mm
        ax.imshow(view.ct, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], extent=(-h, h, -h, h),
                  interpolation="bilinear")
        if view.mask.max() > 0.5:
            coords = np.linspace(-h, h, view.mask.shape[0] + 1)
            centres = (coords[:-1] + coords[1:]) / 2
            ax.contour(centres, centres[::-1], view.mask, levels=[0.5],
                       colors=[probability_color(result.probability)], linewidths=1.2)
        ax.text(0.03, 0.97, f"{label}  {view.plane}", transform=ax.transAxes, color="white", fontsize=6.5,
                ha="left", va="top", bbox={"facecolor": "black", "alpha": 0.5, "edgecolor": "none", "pad": 1.0})
    text_x = 2 * side + 0.01
    figure.text(text_x, 0.95, segment_name(change.node_id) + ("  (target)" if change.target else ""),
                fontsize=11, fontweight="bold", va="top")
    for line, y in zip(_lines(change), (0.78, 0.64, 0.50, 0.36, 0.22, 0.08)):
        figure.text(text_x, y, line, fontsize=8, va="top")
    return _to_rgb(figure)


def _lines(change) -> list[str]:
    row = change_row(change)
    meaning = STATUS_TEXT.get(change.follow_up.status, change.status)
    return [f"status: {change.status}" + (f" ({meaning})" if meaning not in (change.status, "ok", "new") else ""),
            f"short axis {_mm(row['baseline_short_axis_mm'])} -> {_mm(row['follow_up_short_axis_mm'])} mm"
            f" ({_signed(row['short_axis_change_mm'], ' mm')}, {_signed(row['short_axis_change_percent'], ' %')})",
            f"long axis {_mm(row['baseline_long_axis_mm'])} -> {_mm(row['follow_up_long_axis_mm'])} mm",
            f"volume {_mm(row['baseline_volume_mm3'], 0)} -> {_mm(row['follow_up_volume_mm3'], 0)} mm\u00b3",
            f"probability {_mm(row['baseline_probability'], 3)} -> {_mm(row['follow_up_probability'], 3)}"]


def _mm(value, decimals: int = 1) -> str:
    return "\u2014" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def _signed(value, unit: str) -> str:
    return "\u2014" if value is None or not math.isfinite(value) else f"{value:+.1f}{unit}"


def _html(header: str, study, pngs: list[bytes]) -> str:
    esc = html.escape
    lines = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(header)}</title>",
             "<style>body{font-family:sans-serif;margin:1em} td,th{border-bottom:1px solid #ccc;padding:4px 8px}"
             "</style></head><body>", f"<h1>{esc(header)}</h1>",
             f"<p>{esc(recist.SUGGESTION)}. Target nodes: {esc(', '.join(study.response.targets) or 'none')}.</p>",
             "<table><thead><tr><th>node</th><th>status</th><th>baseline | follow-up, sizes and change</th></tr>"
             "</thead><tbody>"]
    for change, png in zip(study.changes, pngs):
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        lines.append(f'<tr data-node-id="{esc(change.node_id, quote=True)}" data-status="{esc(change.status, quote=True)}">'
                     f"<td>{esc(segment_name(change.node_id))}</td><td>{esc(change.status)}</td>"
                     f'<td><img alt="{esc(segment_name(change.node_id), quote=True)}" src="{uri}"></td></tr>')
    lines += ["</tbody></table>", "</body></html>", ""]
    return "\n".join(lines)
