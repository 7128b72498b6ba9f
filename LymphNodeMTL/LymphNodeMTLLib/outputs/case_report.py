"""A case report for review: `report.png` and a self-contained `report.html`.

One row per node, nodes to review first (any status but ok, core/node_status.py), then highest
metastasis probability first: axial, coronal and sagittal thumbnails centred on the node with its
mask outline (and, on the axial one, the RECIST short axis and that slice's long axis), next to the
status (in a red box when it is not ok), the probability (with an interval where there is one) and
the mask agreement,
the axes, the volume and the HU statistics. A node without a usable mask shows "—" for its
probability. A one-line header names the model and, for a model not cleared for clinical use, says so.

Thumbnails are resampled from the CT onto RAS-aligned planes through the node (trilinear CT,
mask outline at the 0.5 level of the interpolated mask), so oblique, flipped or sagittally
acquired CTs still show true axial, coronal and sagittal views, in radiological orientation:
patient right on the image left; anterior up (axial) or on the left (sagittal); superior up.
Window -160..240 HU (soft tissue). The axial plane is the one on which measurements.py found the
short axis, and the drawn axes are the calipers it measured there, so the drawn short axis has the
reported length.

Rendering uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change),
so it runs headless and inside 3D Slicer alike.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core import node_status
from ..core.case import Case
from ..core.geometry import VolumeGeometry
from ..core.node_result import NodeResult
from .segmentation_writer import atomic_output, probability_color, segment_name

PNG_FILE, HTML_FILE = "report.png", "report.html"
WINDOW_HU = (-160.0, 240.0)
THUMBNAIL_PIXELS = 128
MIN_FIELD_OF_VIEW_MM, MAX_FIELD_OF_VIEW_MM = 40.0, 160.0
ROW_HEIGHT_IN, DPI = 2.0, 100
TEXT_WIDTH_IN = 3.2
# The five measurement lines (8.5 pt, va="top"), in row heights: the last ends about 7 pt above
# the row's bottom edge, clear of the next node's name
LINES_TOP, LINE_PITCH = 0.50, 0.095
NOT_CLINICAL = "NOT FOR CLINICAL USE"
VIEWS = ("axial", "coronal", "sagittal")
_LABEL_BOX = {"facecolor": "black", "alpha": 0.5, "edgecolor": "none", "pad": 1.0}
NO_VALUE = "\u2014"  # the probability of a node without a usable mask
REVIEW_COLOR = "#b00000"
# What each status tells the reader, in words.
STATUS_TEXT = {
    node_status.OK: "ok",
    node_status.TOUCHES_FIELD_OF_VIEW: "mask cut at the field of view or the CT's edge",
    node_status.EMPTY_MASK: "no mask found at the seed",
    node_status.SEED_NOT_IN_SOFT_TISSUE: "seed not on soft tissue (air, lung or bone)",
    node_status.NOT_FOUND: "no node where the baseline node went",
    node_status.REGISTRATION_UNCERTAIN: "follow-up CT matches the baseline poorly here: same node?",
    node_status.LOW_AGREEMENT: "uncertain mask edge",
}


# --- public API ---------------------------------------------------------------------------------
def report_order(results: list[NodeResult]) -> list[NodeResult]:
    """Nodes to review first, then by metastasis probability, highest first; unknown (NaN) last
    within each group; ties keep input order."""
    def key(r):
        p = r.probability
        known = p is not None and math.isfinite(p)
        return (0 if node_status.needs_review(r.status) else 1, 0 if known else 1, -float(p) if known else 0.0)

    return sorted(results, key=key)


def status_text(result: NodeResult) -> str:
    """'ok', or 'REVIEW: <what the status means>'."""
    if not node_status.needs_review(result.status):
        return STATUS_TEXT[node_status.OK]
    return f"REVIEW: {STATUS_TEXT.get(result.status, result.status)}"


def probability_text(result: NodeResult) -> str:
    """'0.734 (0.70-0.76)' with the interval where known; '—' when unknown."""
    p = result.probability
    if p is None or not math.isfinite(p):
        return NO_VALUE
    lo, hi = result.probability_low, result.probability_high
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        return f"{p:.3f} ({lo:.2f}-{hi:.2f})"
    return f"{p:.3f}"


def header_text(model_id: str, clinical_use: bool, n_nodes: int) -> str:
    """The report's one-line header."""
    text = f"LymphNodeMTL | model {model_id} | {n_nodes} node{'s' * (n_nodes != 1)}, " \
           "nodes to review first, then highest probability first"
    # the warning leads, so it is the one part of the line that can never be cut off
    return text if clinical_use else f"{NOT_CLINICAL} | {text}"


def write_case_report(out_dir, case: Case, results: list[NodeResult], model_id: str,
                      clinical_use: bool = False) -> tuple[Path, Path]:
    """Write `report.png` and `report.html` into `out_dir`; return their paths.

    Args:
        out_dir: existing folder; each file appears complete or not at all.
        case: the CT (image + geometry) the results belong to.
        results: the nodes, in any order (the report sorts them).
        model_id: named in the header.
        clinical_use: False adds "NOT FOR CLINICAL USE" to the header.
    """
    out_dir = Path(out_dir)
    ordered = report_order(results)
    header = header_text(model_id, clinical_use, len(ordered))
    rows = [_render_row(case, r) for r in ordered]
    width = rows[0].shape[1] if rows else int((3 * ROW_HEIGHT_IN + TEXT_WIDTH_IN) * DPI)
    banner = _render_header(header, width, clinical_use)
    sheet = np.concatenate([banner, *rows], axis=0)
    png_path, html_path = out_dir / PNG_FILE, out_dir / HTML_FILE
    with atomic_output(png_path, suffix=".png") as temporary:
        temporary.write_bytes(_png_bytes(sheet))
    page = _html(header, case, ordered, [_png_bytes(row) for row in rows], clinical_use)
    with atomic_output(html_path, suffix=".html") as temporary:
        temporary.write_text(page, encoding="utf-8")
    return png_path, html_path


# --- geometry of the views ------------------------------------------------------------------------
@dataclass
class NodeView:
    """One thumbnail: CT and mask sampled on a plane, in display millimetres."""

    name: str
    ct: np.ndarray  # (rows, columns) HU, row 0 at the top
    mask: np.ndarray  # same shape, interpolated mask in [0, 1]
    half_width_mm: float
    centre_ras: np.ndarray
    plane: str  # e.g. "S = -12.0 mm"


def _display_to_ras(view: str, centre: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """RAS points of display coordinates (x right, y up, mm from the view centre)."""
    r, a, s = (np.full(np.shape(x), c, dtype=float) for c in centre)
    if view == "axial":  # patient right on the left, anterior up
        r, a = centre[0] - x, centre[1] + y
    elif view == "coronal":  # patient right on the left, superior up
        r, s = centre[0] - x, centre[2] + y
    else:  # sagittal: anterior on the left, superior up
        a, s = centre[1] - x, centre[2] + y
    return np.stack([r, a, s], axis=-1)


def ras_to_display(view: str, centre: np.ndarray, ras: np.ndarray) -> np.ndarray:
    """Display (x, y) mm of RAS points in a view centred on `centre` (inverse of the above)."""
    ras = np.asarray(ras, dtype=float).reshape(-1, 3) - centre
    if view == "axial":
        return np.stack([-ras[:, 0], ras[:, 1]], axis=-1)
    if view == "coronal":
        return np.stack([-ras[:, 0], ras[:, 2]], axis=-1)
    return np.stack([-ras[:, 1], ras[:, 2]], axis=-1)


def view_centre_and_field(geometry: VolumeGeometry, result: NodeResult) -> tuple[np.ndarray, float]:
    """(the node's centre in RAS, the thumbnails' field of view in mm): the mask's centre and about
    twice its extent, or its seed and the smallest field for an empty mask."""
    voxels = np.argwhere(result.mask)
    if len(voxels):
        ras = geometry.ijk_to_ras_points((voxels + np.asarray(result.bbox_start_kji))[:, ::-1])
        centre = ras.mean(axis=0)
        extent = float((ras.max(axis=0) - ras.min(axis=0)).max() + geometry.spacing.max())
    else:
        centre, extent = np.asarray(result.seed_ras, dtype=float), 0.0
    return centre, float(np.clip(2.2 * extent + 10.0, MIN_FIELD_OF_VIEW_MM, MAX_FIELD_OF_VIEW_MM))


def node_views(case: Case, result: NodeResult, axial_s_mm: float | None = None,
               field_of_view_mm: float | None = None) -> list[NodeView]:
    """Axial, coronal and sagittal thumbnails through the node's centre (axial at `axial_s_mm`),
    `field_of_view_mm` wide (default: `view_centre_and_field`'s)."""
    geometry = case.geometry
    centre, fov = view_centre_and_field(geometry, result)
    fov = fov if field_of_view_mm is None else float(field_of_view_mm)
    half = fov / 2.0
    step = fov / THUMBNAIL_PIXELS
    coords = -half + step / 2 + step * np.arange(THUMBNAIL_PIXELS)
    x, y = np.meshgrid(coords, coords[::-1])  # row 0 is the top (largest y)
    mask_padded = np.pad(result.mask.astype(np.float32), 1)
    views = []
    for name in VIEWS:
        c = centre.copy()
        if name == "axial" and axial_s_mm is not None and math.isfinite(axial_s_mm):
            c[2] = axial_s_mm
        points = _display_to_ras(name, c, x, y).reshape(-1, 3)
        kji = geometry.ras_to_ijk_points(points)[:, ::-1].T
        ct = ndimage.map_coordinates(case.image, kji, order=1, mode="constant", cval=-1024.0)
        local = kji - np.asarray(result.bbox_start_kji, dtype=float)[:, None] + 1.0
        mask = ndimage.map_coordinates(mask_padded, local, order=1, mode="constant", cval=0.0)
        axis = {"axial": ("S", 2), "coronal": ("A", 1), "sagittal": ("R", 0)}[name]
        views.append(NodeView(name, ct.reshape(x.shape), mask.reshape(x.shape), half, c,
                              f"{axis[0]} = {c[axis[1]]:.1f} mm"))
    return views


# --- RECIST axes ----------------------------------------------------------------------------------
@dataclass
class RecistAxes:
    """Endpoints (RAS mm) of the short axis and of the long axis on the short axis' axial slice."""

    slice_s_mm: float
    long_ras: np.ndarray  # (2, 3)
    short_ras: np.ndarray  # (2, 3)

    @property
    def long_mm(self) -> float:
        return float(np.linalg.norm(self.long_ras[1] - self.long_ras[0]))

    @property
    def short_mm(self) -> float:
        return float(np.linalg.norm(self.short_ras[1] - self.short_ras[0]))


def recist_axes(result: NodeResult) -> RecistAxes | None:
    """The drawn axes: the calipers measure_node (core/measurements.py) found on the short axis'
    axial slice, so drawn = reported. None for an empty mask or a result never measured."""
    short, long = result.extra.get("short_axis_ras"), result.extra.get("short_axis_slice_long_ras")
    if short is None or long is None or not result.mask.any():
        return None
    return RecistAxes(float(result.extra["short_axis_slice_s_mm"]), np.asarray(long, dtype=float),
                      np.asarray(short, dtype=float))


# --- rendering ------------------------------------------------------------------------------------
def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    return figure


def _to_rgb(figure) -> np.ndarray:
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def _render_header(text: str, width_px: int, clinical_use: bool) -> np.ndarray:
    figure = _figure(width_px / DPI, 0.45)
    label = figure.text(0.01, 0.5, text, va="center", ha="left", fontsize=11, fontweight="bold",
                        color="black" if clinical_use else "#b00000")
    for _ in range(5):  # a long model id: shrink the line rather than cut it off
        figure.canvas.draw()
        right = label.get_window_extent().x1
        if right <= 0.97 * width_px:
            break
        label.set_fontsize(label.get_fontsize() * 0.95 * (0.97 * width_px) / right)
    return _to_rgb(figure)


def _render_row(case: Case, result: NodeResult) -> np.ndarray:
    axes_mm = recist_axes(result)
    views = node_views(case, result, axes_mm.slice_s_mm if axes_mm else None)
    width = 3 * ROW_HEIGHT_IN + TEXT_WIDTH_IN
    figure = _figure(width, ROW_HEIGHT_IN)
    color = probability_color(result.probability)
    side = ROW_HEIGHT_IN / width
    for n, view in enumerate(views):
        ax = figure.add_axes((n * side + 0.004, 0.02, side - 0.008, 0.96))
        h = view.half_width_mm
        ax.imshow(view.ct, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1],
                  extent=(-h, h, -h, h), interpolation="bilinear")
        if view.mask.max() > 0.5:
            coords = np.linspace(-h, h, view.mask.shape[0] + 1)
            centres = (coords[:-1] + coords[1:]) / 2
            ax.contour(centres, centres[::-1], view.mask, levels=[0.5], colors=[color],
                       linewidths=1.2)
        if view.name == "axial" and axes_mm is not None:
            for ends, style in ((axes_mm.long_ras, "--"), (axes_mm.short_ras, "-")):
                xy = ras_to_display("axial", view.centre_ras, ends)
                ax.plot(xy[:, 0], xy[:, 1], style, color="#00e5ff", linewidth=1.2)
        ax.set_xlim(-h, h)
        ax.set_ylim(-h, h)
        ax.set_xticks([])
        ax.set_yticks([])
        for xy, text, size, align in (((0.03, 0.97), view.name, 7, ("left", "top")),
                                      ((0.03, 0.03), view.plane, 6, ("left", "bottom")),
                                      ((0.97, 0.03), f"{2 * h:.0f} mm", 6, ("right", "bottom"))):
            ax.text(*xy, text, transform=ax.transAxes, color="white", fontsize=size,
                    ha=align[0], va=align[1], bbox=_LABEL_BOX)
    text_x = 3 * side + 0.01
    figure.text(text_x, 0.95, segment_name(result.node_id), fontsize=12, fontweight="bold",
                va="top")
    if node_status.needs_review(result.status):  # as large as the probability, white on red: not small print
        figure.text(text_x, 0.79, status_text(result), fontsize=9, fontweight="bold", va="top",
                    color="white", bbox={"facecolor": REVIEW_COLOR, "edgecolor": "none", "pad": 2})
    figure.text(text_x, 0.64, f"metastasis probability {probability_text(result)}",
                fontsize=10, va="top", color="black",
                bbox={"facecolor": color, "alpha": 0.45, "edgecolor": "none", "pad": 2})
    for n, line in enumerate(_measurement_lines(result, axes_mm)):
        figure.text(text_x, LINES_TOP - n * LINE_PITCH, line, fontsize=8.5, va="top")
    return _to_rgb(figure)


def _certainty_line(result: NodeResult) -> str:
    parts = []
    if result.mask_agreement is not None and math.isfinite(result.mask_agreement):
        parts.append(f"mask agreement {result.mask_agreement:.2f}")
    if result.field_of_view_mm is not None and math.isfinite(result.field_of_view_mm):
        parts.append(f"field of view {result.field_of_view_mm:.0f} mm")
    return ", ".join(parts)


def _measurement_lines(result: NodeResult, axes_mm: RecistAxes | None) -> list[str]:
    if result.is_empty:
        return ["no mask: the node was not segmented", _certainty_line(result), "", "", ""]
    drawn = ""
    if axes_mm is not None and abs(axes_mm.long_mm - result.long_axis_mm) >= 0.05:
        drawn = f", {axes_mm.long_mm:.1f} on this slice"  # the longest chord is on another slice
    return [
        f"short axis {_number(result.short_axis_mm, 1)} mm (solid)",
        f"long axis {_number(result.long_axis_mm, 1)} mm (dashed{drawn})",
        f"volume {_number(result.volume_mm3, 0)} mm\u00b3",
        f"mean {_number(result.mean_hu, 0)} HU, SD {_number(result.sd_hu, 0)} HU",
        _certainty_line(result),
    ]


def _number(value, decimals: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# --- HTML -----------------------------------------------------------------------------------------
_STYLE = """
body { font-family: sans-serif; margin: 1em; }
h1 { font-size: 1.1em; }
h1.not-clinical { color: #b00000; }
table { border-collapse: collapse; }
td, th { border-bottom: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #eee; }
td.id { text-align: left; font-weight: bold; }
td.status { text-align: left; }
tr:not([data-status="ok"]) td.status { color: white; background: #b00000; font-weight: bold; }
img { display: block; }
""".strip()


def _html(header: str, case: Case, ordered: list[NodeResult], row_pngs: list[bytes],
          clinical_use: bool) -> str:
    """The page: header, CT facts, one table row per node with its thumbnails as a data URI."""
    esc = html.escape
    facts = [f"CT {'x'.join(str(n) for n in case.geometry.shape_kji[::-1])} voxels, "
             f"{' x '.join(f'{s:.2f}' for s in case.geometry.spacing)} mm"]
    for key in ("SeriesDescription", "StudyDate", "PatientID"):
        if case.metadata.get(key):
            facts.append(f"{key} {case.metadata[key]}")
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(header)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f'<h1 class="{"clinical" if clinical_use else "not-clinical"}">{esc(header)}</h1>',
        f"<p>{esc('; '.join(facts))}. Thumbnails: window {WINDOW_HU[0]:.0f} to "
        f"{WINDOW_HU[1]:.0f} HU, patient right on the image left; solid line: short axis, "
        "dashed: long axis on the same axial slice.</p>",
        "<table><thead><tr><th>node</th><th>status</th><th>metastasis probability (interval)</th>"
        "<th>mask agreement</th><th>short axis mm</th>"
        "<th>long axis mm</th><th>volume mm\u00b3</th><th>mean HU</th>"
        "<th>axial, coronal, sagittal</th></tr></thead><tbody>",
    ]
    for result, png in zip(ordered, row_pngs):
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        lines.append(
            f'<tr class="node" data-node-id="{esc(str(result.node_id), quote=True)}" data-status="{esc(result.status, quote=True)}">'
            f'<td class="id">{esc(segment_name(result.node_id))}</td>'
            f'<td class="status">{esc(status_text(result))}</td>'
            f"<td>{esc(probability_text(result))}</td><td>{_number(result.mask_agreement, 2)}</td>"
            f"<td>{_number(result.short_axis_mm, 1)}</td>"
            f"<td>{_number(result.long_axis_mm, 1)}</td><td>{_number(result.volume_mm3, 0)}</td>"
            f"<td>{_number(result.mean_hu, 0)}</td>"
            f'<td><img alt="{esc(segment_name(result.node_id), quote=True)}" src="{uri}"></td></tr>'
        )
    lines += ["</tbody></table>", "</body></html>", ""]
    return "\n".join(lines)
