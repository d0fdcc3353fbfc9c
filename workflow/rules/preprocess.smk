# Fingerprint (training cases only: the one planning step that reads images) -> plan (from the
# fingerprint and the plan options alone, so changing one of them reads no image), then per case:
# preprocessing and slicing.
#
# The two rules training_cases_* are barriers: one job waits for every training case and writes
# their ids, and fingerprint (train) takes that one file instead of thousands. Snakemake scans a
# producing job's inputs each time another job asks for one of its outputs, so plan.json and the
# model, asked for by every case, would otherwise cost cases x training cases to build the DAG.


rule training_cases_imported:
    input:
        images=expand(f"{RESULTS}/imported/{{case}}/image.nii.gz", case=CASES.train),
        labels=expand(f"{RESULTS}/imported/{{case}}/label.nii.gz", case=CASES.train),
    output:
        f"{RESULTS}/training_cases/imported.json",
    params:
        cases=CASES.train,
    log:
        f"{LOGS}/training_cases_imported.log",
    localrule: True
    run:
        write_case_list(output[0], params.cases, log[0])


rule training_cases_prepared:
    input:
        images=expand(f"{RESULTS}/preprocessed/{{case}}/image.npy", case=CASES.train + CASES.val),
        labels=expand(f"{RESULTS}/preprocessed/{{case}}/label.npy", case=CASES.train + CASES.val),
        slices=expand(f"{RESULTS}/slices/{{case}}/index.json", case=CASES.train + CASES.val),
    output:
        f"{RESULTS}/training_cases/prepared.json",
    params:
        cases=CASES.train + CASES.val,
    log:
        f"{LOGS}/training_cases_prepared.log",
    localrule: True
    run:
        write_case_list(output[0], params.cases, log[0])


rule fingerprint:
    input:
        cases=f"{RESULTS}/training_cases/imported.json",
    output:
        fingerprint=f"{RESULTS}/fingerprint.json",
    params:
        cases=CASES.train,
        imported_root=f"{RESULTS}/imported",
        labels=CASES.labels,
        options=FINGERPRINT_OPTIONS,
    log:
        f"{LOGS}/fingerprint.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/fingerprint.py"


rule plan:
    input:
        fingerprint=f"{RESULTS}/fingerprint.json",
    output:
        plan=f"{RESULTS}/plan.json",
    params:
        options=PLAN_OPTIONS,
    log:
        f"{LOGS}/plan.log",
    localrule: True  # reads one JSON file: not worth a cluster job
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/plan.py"


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
    resources:
        mem_mb=volume_mem_mb,
        runtime=job_runtime_min,
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
    resources:
        mem_mb=volume_mem_mb,
        runtime=job_runtime_min,
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
        options=SLICE_OPTIONS,
    log:
        f"{LOGS}/slice_case/{{case}}.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/slice_case.py"
