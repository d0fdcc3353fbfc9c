"""Rule infer: tiled slice-wise inference of one preprocessed case."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.config import load_config, speed_options  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    # params: what shapes the probabilities; the speed-only keys (device, batch size, model server) from the config.
    inference = {**sm.params.inference, **speed_options(load_config(sm.config), "inference")}
    stages.infer(sm.params.model_dirs, Path(sm.input.image).parent, sm.output.probs, inference=inference,
                 out_info=sm.output.info, server_log_dir=Path(sm.log[0]).parent)
