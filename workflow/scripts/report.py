"""Rule report: the self-contained HTML report."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    stages.report_from_workflow(sm.output.html, inputs=dict(sm.input.items()), cases=sm.params.cases,
                                labels=sm.params.labels, config=sm.config, work_dir=sm.params.work_dir,
                                model_dirs=sm.params.model_dirs)
