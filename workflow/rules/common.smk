import json
import os

from pipeline.config import episode_names, scene_spec, validate_config

validate_config(config, "config (config.yaml and --configfile/--config overrides)")

# Jobs run side by side, one core each: numpy's BLAS threads would otherwise fight over the cores
# (two capture jobs on two cores take twice as long with them). A user's own setting wins.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

RESULTS = config["results"]
SCENES = list(config["scenes"])


wildcard_constraints:
    scene="|".join(SCENES),
    episode=r"(train|val|test)_\d{4}|calibration",


def _spec(scene, sections):
    return json.dumps(scene_spec(config, scene, sections), sort_keys=True)


def capture_spec(wildcards):
    """The config sections a capture reads, as JSON: the stage gets them and Snakemake reruns on change."""
    if wildcards.episode == "calibration":
        return _spec(wildcards.scene, ("rig", "table", "calibration"))
    return _spec(wildcards.scene, ("rig", "table", "scene"))


def sam2_weights(wildcards):
    """The SAM2 checkpoint where the masks stage reads it: an input, so that new weights rerun the masks."""
    masks = config["masks"]
    return [masks["sam2"]["checkpoint"]] if masks["backend"] == "sam2" else []


def stage_spec(wildcards, stage):
    """The config section a stage reads, as JSON."""
    return _spec(wildcards.scene, (stage,))


def episode_artifacts(scene, stage):
    """Every episode's artifact of a stage, in episode order (quality rules pair them with ground truth)."""
    return expand(f"{RESULTS}/{scene}/{stage}/{{episode}}.zarr", episode=scene_episodes(scene))


def scene_episodes(scene):
    return episode_names(config["scenes"][scene])
