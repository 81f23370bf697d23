# Stage `ids`: one object id per Gaussian, voted from the masks through the renderer.


rule ids:
    input:
        tracking=f"{RESULTS}/{{scene}}/tracking/{{episode}}.zarr",
        masks=f"{RESULTS}/{{scene}}/masks/{{episode}}.zarr",
    output:
        directory(f"{RESULTS}/{{scene}}/ids/{{episode}}.zarr"),
    params:
        spec=lambda w: stage_spec(w, "ids"),
    log:
        f"{RESULTS}/{{scene}}/logs/ids/{{episode}}.log",
    benchmark:
        f"{RESULTS}/{{scene}}/benchmarks/ids/{{episode}}.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline.ids --tracking {input.tracking} --masks {input.masks} --spec {params.spec:q} "
        "--out {output} 2> {log}"


rule quality_ids:
    input:
        ids=lambda w: episode_artifacts(w.scene, "ids"),
        tracking=lambda w: episode_artifacts(w.scene, "tracking"),
        groundtruth=lambda w: episode_artifacts(w.scene, "groundtruth"),
    output:
        f"{RESULTS}/{{scene}}/quality/ids.csv",
    log:
        f"{RESULTS}/{{scene}}/logs/quality/ids.log",
    conda:
        "../../envs/capture.yaml"
    shell:
        "python -m pipeline.quality ids --ids {input.ids} --groundtruth {input.groundtruth} --out {output} 2> {log}"
