"""Rule evaluate: Dice, IoU, HD95, ASSD, NSD and volumes of one test case."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    stages.evaluate(sm.wildcards.case, sm.input.seg, sm.input.ref, sm.output.csv, labels=sm.params.labels,
                    nsd_tolerance_mm=sm.params.nsd_tolerance_mm)
