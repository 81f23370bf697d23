# Stage `depth`: metric depth per camera and frame, registered into the colour camera.


rule depth:
    input:
        f"{RESULTS}/{{scene}}/capture/{{episode}}.zarr",
    output:
        directory(f"{RESULTS}/{{scene}}/depth/{{episode}}.zarr"),
    params:
        spec=lambda w: stage_spec(w, "depth"),
    log:
        f"{RESULTS}/{{scene}}/logs/depth/{{episode}}.log",
    benchmark:
        f"{RESULTS}/{{scene}}/benchmarks/depth/{{episode}}.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "python -m pipeline.depth --capture {input} --spec {params.spec:q} --out {output} 2> {log}"


rule quality_depth:
    input:
        depth=lambda w: episode_artifacts(w.scene, "depth"),
        groundtruth=lambda w: episode_artifacts(w.scene, "groundtruth"),
    output:
        f"{RESULTS}/{{scene}}/quality/depth.csv",
    log:
        f"{RESULTS}/{{scene}}/logs/quality/depth.log",
    conda:
        "../../envs/capture.yaml"
    shell:
        "python -m pipeline.quality depth --depth {input.depth} --groundtruth {input.groundtruth} "
        "--out {output} 2> {log}"
