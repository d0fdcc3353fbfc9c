"""Rule aggregate_metrics: metrics.csv (case x class), summary.json and the box plots."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    stages.aggregate_metrics(list(sm.input), sm.output.csv, sm.output.summary, out_boxes=sm.output.boxes)
