"""Rule reassemble: probabilities back onto the input's grid, written as NIfTI + sidecar JSON."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.config import config_sha256  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    # The config's hash is provenance, read from the config (not a param): it never reruns the rule.
    stages.reassemble(sm.input.probs, Path(sm.input.meta).parent, sm.input.image, sm.output.seg,
                      model_dir=sm.params.model_dirs, postprocess=sm.params.postprocess, case_record=sm.input.record,
                      infer_info=sm.input.info, provenance={"config_sha256": config_sha256(sm.config)})
