# Fingerprint -> plan (training cases only), then per case: preprocessing and slicing.


rule fingerprint:
    input:
        images=expand(f"{RESULTS}/imported/{{case}}/image.nii.gz", case=CASES.train),
        labels=expand(f"{RESULTS}/imported/{{case}}/label.nii.gz", case=CASES.train),
    output:
        plan=f"{RESULTS}/plan.json",
    params:
        cases=CASES.train,
        imported_root=parent_of_input_folders,
        labels=CASES.labels,
        plan=config["plan"],
        seed=config["split"]["seed"],
    log:
        f"{LOGS}/fingerprint.log",
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/fingerprint.py"


rule preprocess:
    input:
        image=f"{RESULTS}/imported/{{case}}/image.nii.gz",
        plan=plan_file,
    output:
        image=f"{RESULTS}/preprocessed/{{case}}/image.npy",
        meta=f"{RESULTS}/preprocessed/{{case}}/meta.json",
    params:
        case="{case}",
    log:
        f"{LOGS}/preprocess/{{case}}.log",
    group:
        "prepare_cases"
    resources:
        mem_mb=volume_mem_mb,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/preprocess.py"


rule preprocess_label:
    input:
        label=f"{RESULTS}/imported/{{case}}/label.nii.gz",
        meta=f"{RESULTS}/preprocessed/{{case}}/meta.json",
    output:
        label=f"{RESULTS}/preprocessed/{{case}}/label.npy",
    log:
        f"{LOGS}/preprocess_label/{{case}}.log",
    group:
        "prepare_cases"
    resources:
        mem_mb=volume_mem_mb,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/preprocess_label.py"


rule slice_case:
    input:
        label=f"{RESULTS}/preprocessed/{{case}}/label.npy",
        meta=f"{RESULTS}/preprocessed/{{case}}/meta.json",
        plan=f"{RESULTS}/plan.json",
    output:
        **slice_outputs(),
    params:
        weight_map=NEEDS_WEIGHT_MAP,
        w0=config["loss"]["w0"],
        sigma_px=config["loss"]["sigma_px"],
    log:
        f"{LOGS}/slice_case/{{case}}.log",
    group:
        "prepare_cases"
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/slice_case.py"
