"""Rule plan: spacing, intensity normalisation and patch size from the fingerprint and the plan options."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    stages.plan(sm.input.fingerprint, sm.output.plan, **sm.params.options)
