# Stage `calibration`: the rig's extrinsics in the table-anchored world frame, from the ChArUco sequence.


rule calibration:
    input:
        f"{RESULTS}/{{scene}}/capture/calibration.zarr",
    output:
        directory(f"{RESULTS}/{{scene}}/calibration.zarr"),
    params:
        spec=lambda w: stage_spec(w, "calibration"),
    log:
        f"{RESULTS}/{{scene}}/logs/calibration.log",
    benchmark:
        f"{RESULTS}/{{scene}}/benchmarks/calibration.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline.calibration --capture {input} --spec {params.spec:q} --out {output} 2> {log}"


rule quality_calibration:
    input:
        calibration=f"{RESULTS}/{{scene}}/calibration.zarr",
        groundtruth=f"{RESULTS}/{{scene}}/groundtruth/calibration.zarr",
    output:
        f"{RESULTS}/{{scene}}/quality/calibration.csv",
    log:
        f"{RESULTS}/{{scene}}/logs/quality/calibration.log",
    conda:
        "../../envs/capture.yaml"
    shell:
        "python -m pipeline.quality calibration --calibration {input.calibration} "
        "--groundtruth {input.groundtruth} --out {output} 2> {log}"
