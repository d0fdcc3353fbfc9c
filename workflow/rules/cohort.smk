# Cohort: the built-in demo (when enabled), import and validation of every case.


rule demo_cohort:
    output:
        images=expand(
            f"{RESULTS}/demo_cohort/images/{{case}}.nii.gz",
            case=sorted(CASES.cases) if config["cohort"]["demo"]["enabled"] else [],
        ),
        labels=expand(
            f"{RESULTS}/demo_cohort/labels/{{case}}.nii.gz",
            case=sorted(CASES.cases) if config["cohort"]["demo"]["enabled"] else [],
        ),
        dataset=f"{RESULTS}/demo_cohort/dataset.json",
    params:
        out_dir=folder_of_output_dataset,
        demo=config["cohort"]["demo"],
    log:
        f"{LOGS}/demo_cohort.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/demo_cohort.py"


rule import_case:
    input:
        unpack(case_sources),
    output:
        image=f"{RESULTS}/imported/{{case}}/image.nii.gz",
        record=f"{RESULTS}/imported/{{case}}/case.json",
    params:
        case=case_params,
        labels=CASES.labels,
        options=IMPORT_OPTIONS,
    log:
        f"{LOGS}/import_case/{{case}}.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/import_case.py"


rule import_label:
    input:
        label=source_label,
        image=f"{RESULTS}/imported/{{case}}/image.nii.gz",
        record=f"{RESULTS}/imported/{{case}}/case.json",
    output:
        label=f"{RESULTS}/imported/{{case}}/label.nii.gz",
    params:
        labels=CASES.labels,
        roi_names=CASES.roi_names,
    log:
        f"{LOGS}/import_label/{{case}}.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/import_label.py"
