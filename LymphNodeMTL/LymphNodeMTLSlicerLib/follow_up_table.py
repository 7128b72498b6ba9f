"""The follow-up table node: one row per node with both time points and the change (the columns and
numbers of the command line's follow_up.csv), the suggested nodal response, and what the table
was made from (node references), so that a click on a row and a re-measure find their nodes again.

Unknown values are empty cells. The masks' checksums at the time each row was written are kept, so
a re-measure knows which follow-up segments the radiologist corrected (edited or refined) since.
"""

import json

import vtk
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.outputs.follow_up_table import COLUMNS, format_cell

from .results_table import cellText, toFloat

TEXT_COLUMNS = ("id", "status", "target")
# node references: role -> what the table was made from
REFERENCES = ("baselineVolume", "baselineSegmentation", "followUpVolume", "followUpSegmentation")
_REFERENCE_PREFIX = "lymphNodeFollowUp."
RESPONSE_ATTRIBUTE = "LymphNodeMTL.FollowUpResponse"  # the suggested response, JSON
CHECKSUMS_ATTRIBUTE = "LymphNodeMTL.FollowUpMaskChecksums"  # node id -> checksum of the mask its row measured


def writeRows(tableNode, rows: list) -> None:
    """Replace the table's content with `rows` (outputs/follow_up_table.change_row's dicts)."""
    table = vtk.vtkTable()
    for name in COLUMNS:
        column = vtk.vtkStringArray()
        column.SetName(name)
        column.SetNumberOfValues(len(rows))
        for index, row in enumerate(rows):
            value = row.get(name)
            column.SetValue(index, cellText(value) if name in TEXT_COLUMNS else format_cell(name, value))
        table.AddColumn(column)
    tableNode.SetAndObserveTable(table)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.SetLocked(True)  # values come from the jobs, not from typing


def readRows(tableNode) -> list:
    """The rows as writeRows took them (numbers float, unknown None), in table order."""
    table = tableNode.GetTable() if tableNode is not None else None
    if table is None:
        return []
    rows = []
    for index in range(table.GetNumberOfRows()):
        row = {}
        for name in COLUMNS:
            column = table.GetColumnByName(name)
            text = str(column.GetValue(index)) if column is not None else ""
            row[name] = text if name in TEXT_COLUMNS else (toFloat(text) if text else None)
        rows.append(row)
    return rows


def rowOf(tableNode, nodeId: str) -> dict:
    return next((row for row in readRows(tableNode) if row["id"] == nodeId), None)


def setReferences(tableNode, **nodes) -> None:
    for role in REFERENCES:
        tableNode.SetNodeReferenceID(_REFERENCE_PREFIX + role, nodes[role].GetID())


def reference(tableNode, role: str):
    return tableNode.GetNodeReference(_REFERENCE_PREFIX + role)


def references(tableNode) -> dict:
    """Role -> node; a message saying what to do when one is gone from the scene."""
    if tableNode is None:
        raise InputError("select a follow-up table (press Apply in the Follow-up section first)")
    nodes = {role: reference(tableNode, role) for role in REFERENCES}
    missing = [role for role, node in nodes.items() if node is None]
    if missing:
        raise InputError(f"the follow-up table's {', '.join(missing)} is no longer in the scene; "
                         "press Apply in the Follow-up section again")
    return nodes


def isFollowUpTable(tableNode) -> bool:
    """Whether a follow-up run wrote the table (a results table must not be overwritten by one)."""
    return tableNode.GetAttribute(RESPONSE_ATTRIBUTE) is not None


def setResponse(tableNode, response: dict) -> None:
    tableNode.SetAttribute(RESPONSE_ATTRIBUTE, json.dumps(response))


def response(tableNode) -> dict:
    text = tableNode.GetAttribute(RESPONSE_ATTRIBUTE) if tableNode is not None else None
    return json.loads(text) if text else {}


def responseLine(response: dict) -> str:
    """The response as the panel states it: a suggestion, with what it rests on."""
    if not response:
        return ""
    line = f"Suggested nodal response (RECIST 1.1, for the radiologist to confirm): {response['category']}"
    if response.get("change_percent") is not None:
        line += (f"; target short axes {response['baseline_sum_mm']:.1f} -> {response['follow_up_sum_mm']:.1f} mm "
                 f"({response['change_percent']:+.1f} %)")
    return line + (f". {response['reason']}" if response.get("reason") else ".")


def setChecksums(tableNode, checksums: dict) -> None:
    tableNode.SetAttribute(CHECKSUMS_ATTRIBUTE, json.dumps(checksums, sort_keys=True))


def checksums(tableNode) -> dict:
    text = tableNode.GetAttribute(CHECKSUMS_ATTRIBUTE)
    return json.loads(text) if text else {}
