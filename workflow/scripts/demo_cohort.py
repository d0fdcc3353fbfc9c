"""Rule demo_cohort: write the built-in synthetic CT cohort."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    stages.demo_cohort(sm.params.out_dir, n_cases=int(sm.params.demo["n_cases"]), seed=int(sm.params.demo["seed"]))
