"""Rule volumes: volume, HU statistics and QC flags of one segmentation."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    stages.volumes(sm.wildcards.case, sm.input.seg, sm.input.image, sm.output.csv, labels=sm.params.labels)
