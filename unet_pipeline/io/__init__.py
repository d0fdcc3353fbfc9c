"""Reading and writing: images (NIfTI/NRRD/MHA), DICOM series, RTSTRUCT/SEG labels and exports, npy slabs, atomic files."""
