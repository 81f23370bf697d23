# Stage `tracking`: Gaussians fitted to the first frame and tracked through the episode (Dynamic 3D Gaussians).


rule tracking:
    input:
        capture=f"{RESULTS}/{{scene}}/capture/{{episode}}.zarr",
        depth=f"{RESULTS}/{{scene}}/depth/{{episode}}.zarr",
        masks=f"{RESULTS}/{{scene}}/masks/{{episode}}.zarr",
        calibration=f"{RESULTS}/{{scene}}/calibration.zarr",
    output:
        directory(f"{RESULTS}/{{scene}}/tracking/{{episode}}.zarr"),
    params:
        spec=lambda w: stage_spec(w, "tracking"),
    log:
        f"{RESULTS}/{{scene}}/logs/tracking/{{episode}}.log",
    benchmark:
        f"{RESULTS}/{{scene}}/benchmarks/tracking/{{episode}}.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m pipeline.tracking --capture {input.capture} --depth {input.depth} --masks {input.masks} "
        "--calibration {input.calibration} --spec {params.spec:q} --out {output} 2> {log}"


rule quality_tracking:
    input:
        tracking=lambda w: episode_artifacts(w.scene, "tracking"),
        groundtruth=lambda w: episode_artifacts(w.scene, "groundtruth"),
    output:
        f"{RESULTS}/{{scene}}/quality/tracking.csv",
    log:
        f"{RESULTS}/{{scene}}/logs/quality/tracking.log",
    conda:
        "../../envs/capture.yaml"
    shell:
        "python -m pipeline.quality tracking --tracking {input.tracking} --groundtruth {input.groundtruth} "
        "--out {output} 2> {log}"
