# Tiled slice-wise inference and reassembly onto each input's own grid.


rule infer:
    input:
        model_files(),
        image=f"{RESULTS}/preprocessed/{{case}}/image.npy",
        meta=f"{RESULTS}/preprocessed/{{case}}/meta.json",
    output:
        probs=kept_if_asked(f"{RESULTS}/probabilities/{{case}}.npy"),
        info=kept_if_asked(f"{RESULTS}/probabilities/{{case}}.json"),
    params:
        model_dirs=MODEL_DIRS,
        inference=INFERENCE_OPTIONS,
    log:
        f"{LOGS}/infer/{{case}}.log",
    resources:
        gpu=1,
        mem_mb=volume_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/infer.py"


rule reassemble:
    input:
        model_files(),
        probs=f"{RESULTS}/probabilities/{{case}}.npy",
        info=f"{RESULTS}/probabilities/{{case}}.json",
        meta=f"{RESULTS}/preprocessed/{{case}}/meta.json",
        image=f"{RESULTS}/imported/{{case}}/image.nii.gz",
        record=f"{RESULTS}/imported/{{case}}/case.json",
    output:
        seg=f"{RESULTS}/segmentations/{{case}}.nii.gz",
        sidecar=f"{RESULTS}/segmentations/{{case}}.json",
    params:
        model_dirs=model_folders_of_inputs,
        postprocess=config["postprocess"],
    log:
        f"{LOGS}/reassemble/{{case}}.log",
    resources:
        mem_mb=volume_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/reassemble.py"


# Only for cases read from a DICOM series (DICOM_CASES), when output.dicom_seg / output.rtstruct ask.
rule export_dicom:
    input:
        seg=f"{RESULTS}/segmentations/{{case}}.nii.gz",
        sidecar=f"{RESULTS}/segmentations/{{case}}.json",
    output:
        **dicom_outputs(rule=True),
    params:
        source=dicom_source,
        labels=CASES.labels,
    log:
        f"{LOGS}/export_dicom/{{case}}.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/export_dicom.py"
