# Stage `capture`: a synthetic four-camera RealSense recording per episode, with its ground truth kept
# in a separate artifact that only quality/evaluation rules read.


rule capture:
    output:
        capture=directory(f"{RESULTS}/{{scene}}/capture/{{episode}}.zarr"),
        groundtruth=directory(f"{RESULTS}/{{scene}}/groundtruth/{{episode}}.zarr"),
    params:
        spec=capture_spec,
    log:
        f"{RESULTS}/{{scene}}/logs/capture/{{episode}}.log",
    benchmark:
        f"{RESULTS}/{{scene}}/benchmarks/capture/{{episode}}.tsv"
    conda:
        "../../envs/capture.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline.capture --spec {params.spec:q} --episode {wildcards.episode} "
        "--capture {output.capture} --groundtruth {output.groundtruth} 2> {log}"


rule quality_capture:
    input:
        capture=lambda w: expand(
            f"{RESULTS}/{w.scene}/capture/{{episode}}.zarr", episode=scene_episodes(w.scene) + ["calibration"]
        ),
        groundtruth=lambda w: expand(
            f"{RESULTS}/{w.scene}/groundtruth/{{episode}}.zarr", episode=scene_episodes(w.scene) + ["calibration"]
        ),
    output:
        f"{RESULTS}/{{scene}}/quality/capture.csv",
    log:
        f"{RESULTS}/{{scene}}/logs/quality/capture.log",
    conda:
        "../../envs/capture.yaml"
    shell:
        "python -m pipeline.quality capture --capture {input.capture} --groundtruth {input.groundtruth} "
        "--out {output} 2> {log}"
