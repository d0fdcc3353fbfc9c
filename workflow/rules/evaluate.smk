# Metrics per test case, the aggregate table and summary, and the HTML report.


rule evaluate:
    input:
        seg=f"{RESULTS}/segmentations/{{case}}.nii.gz",
        ref=f"{RESULTS}/imported/{{case}}/label.nii.gz",
    output:
        csv=f"{RESULTS}/metrics/cases/{{case}}.csv",
    params:
        labels=CASES.labels,
        nsd_tolerance_mm=config["evaluation"]["nsd_tolerance_mm"],
    log:
        f"{LOGS}/evaluate/{{case}}.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/evaluate.py"


rule volumes:
    input:
        seg=f"{RESULTS}/segmentations/{{case}}.nii.gz",
        image=f"{RESULTS}/imported/{{case}}/image.nii.gz",
    output:
        csv=f"{RESULTS}/volumes/cases/{{case}}.csv",
    params:
        labels=CASES.labels,
    log:
        f"{LOGS}/volumes/{{case}}.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/volumes.py"


rule aggregate_volumes:
    input:
        expand(f"{RESULTS}/volumes/cases/{{case}}.csv", case=CASES.to_segment),
    output:
        csv=report(
            f"{RESULTS}/volumes.csv",
            caption="../report/volumes.rst",
            category="Volumes",
        ),
    log:
        f"{LOGS}/aggregate_volumes.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/aggregate_volumes.py"


# The review list: per case and class a predicted Dice and the reasons, ranked over the cohort,
# from the sidecars' review signals (computed in rule reassemble, while the probabilities exist).
rule review:
    input:
        expand(f"{RESULTS}/segmentations/{{case}}.json", case=CASES.to_segment),
    output:
        csv=report(
            f"{RESULTS}/review.csv",
            caption="../report/review.rst",
            category="Review",
        ),
    log:
        f"{LOGS}/review.log",
    localrule: True
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/review.py"


rule aggregate_metrics:
    input:
        expand(f"{RESULTS}/metrics/cases/{{case}}.csv", case=evaluated_cases()),
    output:
        csv=report(
            f"{RESULTS}/metrics/metrics.csv",
            caption="../report/metrics.rst",
            category="Metrics",
        ),
        summary=f"{RESULTS}/metrics/summary.json",
        boxes=report(
            f"{RESULTS}/metrics/boxes.png",
            caption="../report/boxes.rst",
            category="Metrics",
        ),
    log:
        f"{LOGS}/aggregate_metrics.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/aggregate_metrics.py"


rule report:
    input:
        unpack(report_inputs),
    output:
        html=report(
            f"{RESULTS}/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
    params:
        cases=report_case_table,
        labels=CASES.labels,
        work_dir=f"{RESULTS}/report_figures",
        model_dirs=MODEL_DIRS,
    log:
        f"{LOGS}/report.log",
    resources:
        mem_mb=job_mem_mb,
        runtime=job_runtime_min,
    conda:
        "../envs/unet.yaml"
    script:
        "../scripts/report.py"
