"""Files in: CT volumes (NRRD, NIfTI, MetaImage, DICOM series), seed files (markups, CSV) and training manifests, converted once to the Lib's RAS convention."""
