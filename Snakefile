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


# Cases whose ids cannot be used (unsafe, duplicated, clashing in letter case) are left out of
# the run; they are named when it starts, and this job, which runs after every other target,
# fails naming them, so the run exits non-zero until they are renamed.
onstart:
    print_rejected_cases(log)


onerror:
    print_rejected_cases(log)


rule rejected_cases:
    input:
        final_targets(with_rejected=False),
    output:
        REJECTED_CASES,
    params:
        message=REJECTED_MESSAGE,
    log:
        f"{LOGS}/rejected_cases.log",
    localrule: True
    message:
        "{params.message}"
    run:
        Path(log[0]).write_text(params.message + "\n", encoding="utf-8")
        raise ValueError(params.message)
