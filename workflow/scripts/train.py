"""Rule train: train the U-Net (resumes from the checkpoint in the model folder)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.config import load_config, speed_options  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    # params: what shapes the model (unet_pipeline.config.train_options(config, speed=False)); the
    # speed-only keys and the postprocess record come from the config, so editing them never retrains.
    config = load_config(sm.config)
    options = {**sm.params.options, "postprocess": config["postprocess"]}
    speed = speed_options(config, "training")
    options["training"] = {**options["training"], **speed, "threads": speed["threads"] or int(sm.threads)}
    stages.train(sm.params.train, sm.params.val, preprocessed_root=sm.params.preprocessed_root,
                 slices_root=sm.params.slices_root, plan_path=sm.input.plan, out_dir=Path(sm.output.weights).parent,
                 **options)
