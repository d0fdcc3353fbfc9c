# Training: one U-Net on the training cases, validated on the validation cases, written to
# results/model/; with split.folds = k, one per cross-validation fold in results/model/fold_<i>/.
# The rule resumes from the model folder's checkpoint.pt by itself when rerun after a kill.


rule train:
    input:
        unpack(training_inputs),
    output:
        weights=f"{RESULTS}/{{model_dir}}/model.safetensors",
        meta=f"{RESULTS}/{{model_dir}}/model.json",
        log_csv=f"{RESULTS}/{{model_dir}}/train_log.csv",
        curves=report(
            f"{RESULTS}/{{model_dir}}/curves.png",
            caption="../report/curves.rst",
            category="Training",
        ),
    params:
        train=fold_train_ids,
        val=fold_val_ids,
        preprocessed_root=f"{RESULTS}/preprocessed",
        slices_root=f"{RESULTS}/slices",
        options=TRAIN_OPTIONS,
    wildcard_constraints:
        model_dir=r"model(/fold_\d+)?",
    log:
        f"{LOGS}/{{model_dir}}/train.log",
    benchmark:
        f"{LOGS}/{{model_dir}}/train.benchmark.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=training_runtime_min,
        slurm_extra="'--signal=USR1@300'",  # SIGUSR1 5 min before the time limit: checkpoint, exit, resume
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/train.py"
