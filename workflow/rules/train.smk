# Training: one U-Net on the training cases, validated on the validation cases.
# The rule resumes from results/model/checkpoint.pt by itself when rerun after a kill.


rule train:
    input:
        unpack(training_inputs),
    output:
        weights=f"{RESULTS}/model/model.safetensors",
        meta=f"{RESULTS}/model/model.json",
        log_csv=f"{RESULTS}/model/train_log.csv",
        curves=report(
            f"{RESULTS}/model/curves.png",
            caption="../report/curves.rst",
            category="Training",
        ),
    params:
        train=CASES.train,
        val=CASES.val,
        preprocessed_root=f"{RESULTS}/preprocessed",
        slices_root=f"{RESULTS}/slices",
        model=config["model"],
        training=config["training"],
        augment=config["augment"],
        loss=config["loss"],
    log:
        f"{LOGS}/train.log",
    benchmark:
        f"{LOGS}/train.benchmark.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=training_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/train.py"
