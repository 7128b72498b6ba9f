"""The per-node results table node: one row per lymph-node segment, "review first" rows on top.

Columns are named as in the command line's nodes.csv where they mean the same thing. Values that
are not known (a node the engine could not segment has no probability) are empty cells, never a
confident-looking number. The table is read-only in the view; its values come from the segments:
from a run's results, else from the segment's tags (a reloaded scene, a table lost).
"""

import math

import vtk
from LymphNodeMTLLib.core import node_status
from LymphNodeMTLLib.core.node_result import NodeResult

from .node_segments import lymphNodeSegments, tagsOf

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
    ("probability_low", "optional", "", "Lower end of the probability's interval where the engine gives one "
                                        "(engines since the one-pass uncertainty give none)"),
    ("probability_high", "optional", "", "Upper end of the probability's interval where the engine gives one"),
    ("label", "string", "", "Predicted class at the model's threshold"),
    ("mask_agreement", "optional", "", "Stability of the mask under a threshold change (Dice of the masks at "
                                       "probability 0.1 and 0.9); below 0.861: low_agreement"),
    ("volume_mm3", "double", "mm3", "Volume of the node mask"),
    ("short_axis_mm", "double", "mm", "RECIST short axis, in the axial plane"),
    ("long_axis_mm", "double", "mm", "RECIST long axis, in the axial plane"),
    ("mean_hu", "double", "HU", "Mean attenuation inside the mask"),
)
COLUMN_NAMES = tuple(name for name, *_ in TABLE_COLUMNS)
DECIMALS = {"probability": 4, "probability_low": 4, "probability_high": 4, "mask_agreement": 3,
            "volume_mm3": 2, "short_axis_mm": 2, "long_axis_mm": 2, "mean_hu": 1}
_KINDS = {name: kind for name, kind, _unit, _description in TABLE_COLUMNS}
DEFAULT_LABELS = ("benign", "metastatic")
_PROBABILITY_COLUMNS = ("probability", "probability_low", "probability_high")


def rowFromResult(result: NodeResult, labels=DEFAULT_LABELS) -> dict:
    """A table row from a node's result; no probability (or label) without a usable mask."""
    fields = {name: getattr(result, name) for name in ("status", "predicted_label", *DECIMALS)}
    return rowFromFields(result.node_id, fields, labels)


def rowFromFields(nodeId, fields: dict, labels=DEFAULT_LABELS) -> dict:
    """A table row from a node's NodeResult fields (a result's, or those its segment tags hold)."""
    usable = node_status.has_usable_mask(fields["status"])
    row = {"id": str(nodeId), "status": fields["status"] or node_status.OK,
           "label": labelName(fields["predicted_label"], labels) if usable else ""}
    for name in DECIMALS:
        value = fields[name] if usable or name not in _PROBABILITY_COLUMNS else math.nan
        row[name] = round(float(value), DECIMALS[name]) if _finite(value) else math.nan
    return row


def syncTable(tableNode, segmentationNode, updated: dict, labels=DEFAULT_LABELS) -> None:
    """One row per lymph-node segment (review-first order): `updated` results (node id -> NodeResult)
    give new values, other rows keep theirs (or are rebuilt from the segment's tags when missing)."""
    replaceRows(tableNode, segmentationNode, {nodeId: rowFromResult(result, labels)
                                              for nodeId, result in updated.items()}, labels)


def replaceRows(tableNode, segmentationNode, replaced: dict, labels=DEFAULT_LABELS) -> None:
    """syncTable with rows given as they are (node id -> row, as tableRows reads them; None: the
    row the segment's tags give): a row taken before a change brings the table back to what it was."""
    old = tableRows(tableNode)
    segmentation = segmentationNode.GetSegmentation()
    rows = []
    for nodeId, segmentId in lymphNodeSegments(segmentationNode).items():
        if replaced.get(nodeId) is not None:
            rows.append(replaced[nodeId])
        elif nodeId in old and nodeId not in replaced:
            rows.append(old[nodeId])
        else:
            rows.append(rowFromFields(nodeId, tagsOf(segmentation.GetSegment(segmentId)).fields, labels))
    writeTable(tableNode, rows, segmentationNode)


def writeTable(tableNode, rows: list, segmentationNode) -> None:
    """Replace the table's content with `rows` (review-first order), linked to the segmentation."""
    rows = sorted(rows, key=lambda row: not node_status.needs_review(row.get("status")))  # stable: review first
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


def labelName(predicted: int, labels) -> str:
    """The class name of a predicted label; empty for a node without one (UNKNOWN_LABEL)."""
    if predicted < 0:
        return ""
    return labels[predicted] if predicted < len(labels) else str(predicted)


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
