"""The per-node results table node: one row per lymph-node segment, "review first" rows on top.

Columns are named as in the command line's nodes.csv where they mean the same thing. Values that
are not known (a node the engine could not segment has no probability) are empty cells, never a
confident-looking number. The table is read-only in the view; its values come from the segments.
"""

import math

import vtk
from LymphNodeMTLLib.core import node_status
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.outputs import segmentation_writer as segw

# Table node reference to the segmentation its rows describe.
TABLE_SEGMENTATION_REFERENCE = "lymphNodeSegmentation"
# Column, kind, unit, description. Kinds: "string" text; "double" a number always known (a
# numeric column, sortable); "optional" a number that may be unknown, kept as fixed-decimal text
# so that an unknown value is an empty cell (a double column would show "nan").
TABLE_COLUMNS = (
    ("id", "string", "", "Seed id: the label of the seed's control point"),
    ("status", "string", "", "What the engine could do for this node: ok, low_agreement (review), "
                             "touches_field_of_view, empty_mask, seed_not_in_soft_tissue"),
    ("probability", "optional", "", "Metastasis probability (demonstration model, not clinical); "
                                    "empty when the node has no usable mask"),
    ("probability_low", "optional", "", "Lower end of the probability over the augmented passes"),
    ("probability_high", "optional", "", "Upper end of the probability over the augmented passes"),
    ("label", "string", "", "Predicted class at the model's threshold"),
    ("mask_agreement", "optional", "", "Mean pairwise Dice of the augmented passes' masks"),
    ("volume_mm3", "double", "mm3", "Volume of the node mask"),
    ("short_axis_mm", "double", "mm", "RECIST short axis, in the axial plane"),
    ("long_axis_mm", "double", "mm", "RECIST long axis, in the axial plane"),
    ("mean_hu", "double", "HU", "Mean attenuation inside the mask"),
)
COLUMN_NAMES = tuple(name for name, *_ in TABLE_COLUMNS)
DECIMALS = {"probability": 4, "probability_low": 4, "probability_high": 4, "mask_agreement": 3,
            "volume_mm3": 2, "short_axis_mm": 2, "long_axis_mm": 2, "mean_hu": 1}
_KINDS = {name: kind for name, kind, _unit, _description in TABLE_COLUMNS}
# The Lib's segment tags (segment_tags()) carry every fact a row needs, so a reloaded scene rebuilds it.
TAG_STATUS = segw.TAG_STATUS
TAG_MASK_AGREEMENT = segw.TAG_MASK_AGREEMENT
TAG_PROBABILITY_LOW = segw.TAG_PROBABILITY_LOW
TAG_PROBABILITY_HIGH = segw.TAG_PROBABILITY_HIGH
DEFAULT_LABELS = ("benign", "metastatic")


def needsReview(row: dict) -> bool:
    """A row to look at first: the engine's status is not a plain ok (low agreement included)."""
    return bool(row.get("status")) and row.get("status") != node_status.OK


def reviewFirst(rows: list) -> list:
    """Rows needing review on top; otherwise the order given (stable)."""
    return sorted(rows, key=lambda row: not needsReview(row))


def hasUsableMask(status: str) -> bool:
    return (status or node_status.OK) in node_status.HAS_USABLE_MASK


def rowFromResult(result: NodeResult, labels=DEFAULT_LABELS) -> dict:
    """A table row from an engine result; no probability (or label) without a usable mask."""
    usable = hasUsableMask(result.status)
    row = {"id": str(result.node_id), "status": result.status or node_status.OK,
           "label": labelName(result.predicted_label, labels) if usable else ""}
    for name, value in (("probability", result.probability), ("probability_low", result.probability_low),
                        ("probability_high", result.probability_high),
                        ("mask_agreement", result.mask_agreement), ("volume_mm3", result.volume_mm3),
                        ("short_axis_mm", result.short_axis_mm), ("long_axis_mm", result.long_axis_mm),
                        ("mean_hu", result.mean_hu)):
        if not usable and name in ("probability", "probability_low", "probability_high"):
            value = math.nan
        row[name] = round(float(value), DECIMALS[name]) if _finite(value) else math.nan
    return row


def rowFromTags(segment, labels=DEFAULT_LABELS) -> dict:
    """A table row rebuilt from a segment's tags (a scene saved before the table, or edited)."""
    number = lambda key: toFloat(segmentTag(segment, key))  # noqa: E731
    status = segmentTag(segment, TAG_STATUS) or node_status.OK
    predicted = segmentTag(segment, segw.TAG_PREDICTED_LABEL)
    usable = hasUsableMask(status)
    return {
        "id": segmentTag(segment, segw.TAG_SEED_ID),
        "status": status,
        "probability": number(segw.TAG_PROBABILITY) if usable else math.nan,
        "probability_low": number(TAG_PROBABILITY_LOW) if usable else math.nan,
        "probability_high": number(TAG_PROBABILITY_HIGH) if usable else math.nan,
        "label": labelName(int(predicted), labels) if usable and predicted.isdigit() else "",
        "mask_agreement": number(TAG_MASK_AGREEMENT),
        "volume_mm3": number(segw.TAG_VOLUME),
        "short_axis_mm": number(segw.TAG_SHORT_AXIS),
        "long_axis_mm": number(segw.TAG_LONG_AXIS),
        "mean_hu": number(segw.TAG_MEAN_HU),
    }


def writeTable(tableNode, rows: list, segmentationNode) -> None:
    """Replace the table's content with `rows` (review-first order), linked to the segmentation."""
    rows = reviewFirst(rows)
    table = vtk.vtkTable()
    for name, kind, _unit, _description in TABLE_COLUMNS:
        column = vtk.vtkDoubleArray() if kind == "double" else vtk.vtkStringArray()
        column.SetName(name)
        column.SetNumberOfValues(len(rows))
        for index, row in enumerate(rows):
            value = row.get(name)
            if kind == "double":
                column.SetValue(index, math.nan if value is None else float(value))
            elif kind == "optional":
                column.SetValue(index, _fixed(value, DECIMALS[name]))
            else:
                column.SetValue(index, cellText(value))
        table.AddColumn(column)
    tableNode.SetAndObserveTable(table)
    # Column names are the header, not the first data row (as Segment Statistics does).
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    for name, _kind, unit, description in TABLE_COLUMNS:
        tableNode.SetColumnUnitLabel(name, unit)
        tableNode.SetColumnDescription(name, description)
    tableNode.SetNodeReferenceID(TABLE_SEGMENTATION_REFERENCE, segmentationNode.GetID())
    tableNode.SetLocked(True)  # read-only in the table view: values come from the segments


def tableRows(tableNode) -> dict:
    """Node id -> {column: value} of a results table in row order (text str, numbers float)."""
    rows = {}
    table = tableNode.GetTable() if tableNode is not None else None
    if table is None:
        return rows
    columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    for row in range(table.GetNumberOfRows()):
        values = {column.GetName(): cellValue(column, row, _KINDS.get(column.GetName(), "string"))
                  for column in columns}
        if values.get("id"):
            rows[values["id"]] = values
    return rows


def nodeIdOfRow(tableNode, row: int) -> str:
    """The node id in data row `row` (0 = the first node, whatever the header setting)."""
    table = tableNode.GetTable()
    column = table.GetColumnByName("id") if table is not None else None
    if column is None or not 0 <= row < table.GetNumberOfRows():
        return ""
    return str(column.GetValue(row))


def segmentTag(segment, key, default=""):
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else default


def labelName(predicted: int, labels) -> str:
    return labels[predicted] if 0 <= predicted < len(labels) else str(predicted)


def cellText(value) -> str:
    """Table text without double quotes (they do not survive Slicer's CSV/TSV round trip)."""
    return "" if value is None else str(value).replace('"', "'")


def cellValue(column, row: int, kind: str):
    """One table cell: numeric columns as float (NaN when empty), text columns as str."""
    if column.IsA("vtkDataArray"):
        value = float(column.GetTuple1(row))
        return value if kind != "string" else str(value)
    text = str(column.GetValue(row))
    return text if kind == "string" else toFloat(text)


def toFloat(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _fixed(value, decimals: int) -> str:
    return f"{float(value):.{decimals}f}" if _finite(value) else ""
