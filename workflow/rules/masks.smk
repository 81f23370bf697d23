# Stage `masks`: instance masks per view and frame, one id per object across all views and frames.


rule masks:
    input:
        capture=f"{RESULTS}/{{scene}}/capture/{{episode}}.zarr",
        depth=f"{RESULTS}/{{scene}}/depth/{{episode}}.zarr",
        calibration=f"{RESULTS}/{{scene}}/calibration.zarr",
        weights=sam2_weights,
    output:
        directory(f"{RESULTS}/{{scene}}/masks/{{episode}}.zarr"),
    params:
        spec=lambda w: stage_spec(w, "masks"),
    log:
        f"{RESULTS}/{{scene}}/logs/masks/{{episode}}.log",
    benchmark:
        f"{RESULTS}/{{scene}}/benchmarks/masks/{{episode}}.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "python -m pipeline.masks --capture {input.capture} --depth {input.depth} --calibration {input.calibration} "
        "--spec {params.spec:q} --out {output} 2> {log}"


rule quality_masks:
    input:
        masks=lambda w: episode_artifacts(w.scene, "masks"),
        groundtruth=lambda w: episode_artifacts(w.scene, "groundtruth"),
    output:
        f"{RESULTS}/{{scene}}/quality/masks.csv",
    log:
        f"{RESULTS}/{{scene}}/logs/quality/masks.log",
    conda:
        "../../envs/capture.yaml"
    shell:
        "python -m pipeline.quality masks --masks {input.masks} --groundtruth {input.groundtruth} "
        "--out {output} 2> {log}"
