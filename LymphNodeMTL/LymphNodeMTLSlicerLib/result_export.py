"""The module's Export: nodes.seg.nrrd (Slicer's own writer, on the CT's whole grid), the command
line's nodes.csv (the Lib's writer, one format) and DICOM SEG (the Lib's writer) where highdicom
with pydicom 3 is available, referencing the DICOM series the CT was loaded from."""

from pathlib import Path

import slicer
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.outputs.results_table import write_results_csv

from . import dependency_installer

SLICER_DICOM_EXPORT = ("Slicer's own DICOM export also writes DICOM SEG: Data module, right-click the "
                       "segmentation, Export to DICOM (Slicer 5.12 does it itself; Slicer 5.10 needs the "
                       "QuantitativeReporting extension).")


def exportResults(segmentationNode, volumeNode, results: list, localGeometry, folder, clinicalUse=False) -> dict:
    """nodes.seg.nrrd, nodes.csv and (with a DICOM SEG writer) nodes.dcm in folder.

    results: every lymph-node segment as a NodeResult (current mask, facts from its tags);
    localGeometry: the CT's own grid, not world (DICOM positions are those of the source images).
    Returns the paths written (None where not) and one message line per file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = {"segmentation": None, "table": None, "dicomSeg": None, "messages": []}

    segPath = folder / "nodes.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(segPath))
    storage.SetCropToMinimumExtent(False)  # the CT's whole grid, like the command line's file
    if not storage.WriteData(segmentationNode):
        raise RuntimeError(f"could not write {segPath}")
    report["segmentation"] = str(segPath)
    report["messages"].append(f"Segmentation: {segPath}")

    if results:
        csvPath = write_results_csv(folder / "nodes.csv", results)
        report["table"] = str(csvPath)
        report["messages"].append(f"Table: {csvPath}")

    report["dicomSeg"], message = _exportDicomSeg([r for r in results if r.mask.any()], volumeNode,
                                                  localGeometry, folder / "nodes.dcm", clinicalUse)
    report["messages"].append(message)
    return report


def _exportDicomSeg(results, volumeNode, geometry, path, clinicalUse):
    """DICOM SEG through the Lib's writer; (path or None, a line for the user)."""
    try:
        from LymphNodeMTLLib.outputs import dicom_seg_writer
    except ImportError:
        return None, "DICOM SEG: not written. " + dependency_installer.DICOM_SEG_NEEDS
    if not results:
        return None, "DICOM SEG: not written, there are no lymph-node segments."
    sources, note = _dicomSourceDatasets(volumeNode, geometry, dicom_seg_writer)
    model = results[0].model
    try:
        dicom_seg_writer.write_dicom_seg(path, results, None, geometry, sources, model.model_id if model else "",
                                         model.weights_sha256 if model else "", clinical_use=clinicalUse)
    except ImportError as error:  # highdicom / pydicom not installed in this Python
        return None, (f"DICOM SEG: not written, the Python package {error.name} is missing. "
                      + dependency_installer.DICOM_SEG_NEEDS)
    except (ValueError, InputError) as error:  # e.g. segments that overlap after editing
        return None, f"DICOM SEG: not written ({error}). " + SLICER_DICOM_EXPORT
    return str(path), f"DICOM SEG: {path}{note}"


def _dicomSourceDatasets(volumeNode, geometry, writer):
    """Headers of the DICOM series the CT was loaded from, else None (the writer then makes a
    synthetic series), with a note for the user."""
    synthetic = " (the CT was not loaded from DICOM: the SEG references a synthetic CT series)"
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    files = [database.fileForInstance(uid) for uid in uids] if database and uids else []
    if not files or not all(files) or len({str(Path(f).parent) for f in files}) != 1:
        return None, synthetic
    series = database.fileValue(files[0], "0020,000E") or None
    try:
        return writer.read_source_datasets(Path(files[0]).parent, geometry, series), ""
    except (InputError, OSError) as error:
        return None, f"{synthetic[:-1]}; {error})"
