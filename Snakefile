# Batch CT segmentation with a 2D U-Net: see README.md and config/README.md.
# Entry point only: configuration, validation, includes and the final targets.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        final_targets(),
    default_target: True
