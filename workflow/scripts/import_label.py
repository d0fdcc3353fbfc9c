"""Rule import_label: write a validated label on the imported image's grid."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    stages.import_label(sm.input.label, sm.input.image, sm.output.label, labels=sm.params.labels,
                        roi_names=sm.params.roi_names, record=sm.input.record)
