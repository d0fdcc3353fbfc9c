"""Rule export_dicom: a DICOM case's segmentation as DICOM-SEG and/or RTSTRUCT referencing its series."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
source = sm.params.source
with rule_logging(sm.log[0]):
    stages.export_dicom(sm.input.seg, source["folder"], labels=sm.params.labels, series_uid=source["series_uid"],
                        out_seg=getattr(sm.output, "seg", None), out_rtstruct=getattr(sm.output, "rtstruct", None))
