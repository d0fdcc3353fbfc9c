"""Rule train: train the U-Net (resumes from the checkpoint in the model folder)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from unet_pipeline import stages  # noqa: E402
from unet_pipeline.runlog import rule_logging  # noqa: E402

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    training = {**sm.params.training, "threads": int(sm.threads)}
    # postprocess: recorded in model.json; taken from the config, not params, so editing it never retrains.
    stages.train(sm.params.train, sm.params.val, preprocessed_root=sm.params.preprocessed_root,
                 slices_root=sm.params.slices_root, plan_path=sm.input.plan, out_dir=Path(sm.output.weights).parent,
                 model=sm.params.model, training=training, augment=sm.params.augment, loss=sm.params.loss,
                 postprocess=sm.config.get("postprocess"))
