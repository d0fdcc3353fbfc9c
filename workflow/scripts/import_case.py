"""Rule import_case: validate a case (image + label) and write the image as NIfTI."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
case = sm.params.case
with rule_logging(sm.log[0]):
    stages.import_case(case["case_id"], case["image"], case["label"], Path(sm.output.image).parent,
                       labels=sm.params.labels, series_uid=case.get("series_uid"), **sm.params.options)
