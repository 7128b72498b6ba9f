"""The seeds point list read as the engine's seeds: one placed control point per node."""

from LymphNodeMTLLib.core.case import Seed


def seedsFromMarkups(markupsNode) -> list:
    """Placed control points in world RAS; id = the point's label, or its 1-based index."""
    seeds = []
    for index in range(markupsNode.GetNumberOfControlPoints()):
        if markupsNode.GetNthControlPointPositionStatus(index) != markupsNode.PositionDefined:
            continue  # a point still being placed
        ras = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(index, ras)
        label = markupsNode.GetNthControlPointLabel(index).strip() or str(index + 1)
        seeds.append(Seed(label, (float(ras[0]), float(ras[1]), float(ras[2]))))
    return seeds
