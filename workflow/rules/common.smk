import json

from pipeline.config import episode_names, scene_spec, validate_config

validate_config(config, "config (config.yaml and --configfile/--config overrides)")

RESULTS = config["results"]
SCENES = list(config["scenes"])


wildcard_constraints:
    scene="|".join(SCENES),
    episode=r"(train|val|test)_\d{4}|calibration",


def spec_json(wildcards):
    """The scene's validated config section as JSON: the stage reads it, and Snakemake reruns on change."""
    return json.dumps(scene_spec(config, wildcards.scene), sort_keys=True)


def scene_episodes(scene):
    return episode_names(config["scenes"][scene])
