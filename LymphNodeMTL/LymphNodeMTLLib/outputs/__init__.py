"""Files out: Slicer .seg.nrrd, the nodes CSV, DICOM SEG, the case report and run.json."""
