"""Rule review: review.csv, the cohort's segmentations ranked by predicted Dice (lowest first)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    stages.review_list(list(sm.input), sm.output.csv)
