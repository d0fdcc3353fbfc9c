"""Rule fingerprint: the training cases' statistics (spacings, shapes, HU, voxels per class), read once."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    stages.fingerprint([(c, Path(sm.params.imported_root) / c) for c in sm.params.cases], sm.output.fingerprint,
                       labels=sm.params.labels, **sm.params.options)
