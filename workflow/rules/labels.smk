# Stage `labels`: robust rigid fits of the tracked Gaussians per object, exported as training pseudo-labels.


rule labels:
    input:
        tracking=f"{RESULTS}/{{scene}}/tracking/{{episode}}.zarr",
        ids=f"{RESULTS}/{{scene}}/ids/{{episode}}.zarr",
        capture=f"{RESULTS}/{{scene}}/capture/{{episode}}.zarr",
        masks=f"{RESULTS}/{{scene}}/masks/{{episode}}.zarr",
    output:
        directory(f"{RESULTS}/{{scene}}/labels/{{episode}}.zarr"),
    params:
        spec=lambda w: stage_spec(w, "labels"),
    log:
        f"{RESULTS}/{{scene}}/logs/labels/{{episode}}.log",
    benchmark:
        f"{RESULTS}/{{scene}}/benchmarks/labels/{{episode}}.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline.labels --tracking {input.tracking} --ids {input.ids} --capture {input.capture} "
        "--masks {input.masks} --spec {params.spec:q} --out {output} 2> {log}"


rule quality_labels:
    input:
        labels=lambda w: episode_artifacts(w.scene, "labels"),
        groundtruth=lambda w: episode_artifacts(w.scene, "groundtruth"),
    output:
        f"{RESULTS}/{{scene}}/quality/labels.csv",
    log:
        f"{RESULTS}/{{scene}}/logs/quality/labels.log",
    conda:
        "../../envs/capture.yaml"
    shell:
        "python -m pipeline.quality labels --labels {input.labels} --groundtruth {input.groundtruth} "
        "--out {output} 2> {log}"
