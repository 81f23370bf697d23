"""Loading and validating config.yaml against workflow/schemas/config.schema.yaml.

Both the Snakefile and every ``python -m pipeline.<stage>`` command validate through here, so a config
that Snakemake accepts is the config a stage runs with. Defaults from the schema are filled in.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
EPISODE_SPLITS = ("train", "val", "test")


class ConfigError(ValueError):
    """A config that does not match the schema, or names something that does not exist."""


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    # JSON Schema counts 5.0 as an integer; range(), array shapes and OpenCV do not.
    integers = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda checker, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(validator_class, {"properties": set_defaults}, type_checker=integers)


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _best_message(error: jsonschema.ValidationError) -> str:
    best = jsonschema.exceptions.best_match([error])
    where = "/".join(str(p) for p in best.absolute_path) or "(top level)"
    msg = best.message
    if best.validator == "additionalProperties" or best.validator == "unevaluatedProperties":
        msg = f"unknown key: {msg}"
    return f"config key '{where}': {msg}"


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate a config dict in place (filling defaults) and return it; raises ConfigError."""
    schema = load_schema()
    cls = _with_defaults(jsonschema.validators.validator_for(schema))
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: len(list(e.absolute_path)))
    if errors:
        raise ConfigError(f"{source}: {_best_message(errors[0])}")
    return config


def validate_section(value: dict, path: str, source: str) -> dict:
    """Validate one part of a config (``path`` such as ``calibration/board``, or ``$defs/scene`` for a
    definition) against its place in the schema, filling defaults."""
    schema = load_schema()
    keys = path.split("/")
    node = schema["$defs"][keys[1]] if keys[0] == "$defs" else schema
    for key in keys[2:] if keys[0] == "$defs" else keys:
        node = node["properties"][key]
    sub = {**node, "$defs": schema.get("$defs", {})}
    cls = _with_defaults(jsonschema.validators.validator_for(schema))
    errors = sorted(cls(sub).iter_errors(value), key=lambda e: len(list(e.absolute_path)))
    if errors:
        raise ConfigError(f"{source}: {_best_message(errors[0])}")
    return value


def read_mapping(text: str, source: str, language: str = "YAML") -> dict:
    """``text`` (YAML, or JSON with ``language`` "JSON") parsed into a mapping; ConfigError naming ``source``
    where it does not parse or is no mapping."""
    try:
        value = json.loads(text) if language == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{source}: not valid {language} ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: expected a {language} object (a mapping), got {type(value).__name__}")
    return value


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    return validate_config(read_mapping(path.read_text(), str(path)), str(path))


def episode_names(scene_cfg: dict) -> list[str]:
    """Episode ids of a scene, e.g. ['train_0000', 'train_0001', 'val_0000', 'test_0000']."""
    return [f"{split}_{i:04d}" for split in EPISODE_SPLITS for i in range(scene_cfg["episodes"][split])]


def split_of(episode: str) -> str:
    split = episode.split("_")[0]
    if split not in EPISODE_SPLITS:
        raise ConfigError(f"episode '{episode}': expected a name like train_0000, val_0003 or test_0001")
    return split


SPEC_SECTIONS = ("rig", "table", "calibration", "depth", "masks", "tracking", "ids", "labels", "scene")
SECTION_SCHEMA = {**{k: k for k in SPEC_SECTIONS}, "scene": "$defs/scene"}


def scene_spec(config: dict, scene: str, sections: tuple[str, ...] = SPEC_SECTIONS) -> dict:
    """What shapes one scene's stage: its name and the chosen config sections (the rig, the table, the
    calibration board, the scene itself). A stage is given only the sections it reads, so that Snakemake
    reruns it when those change and not otherwise."""
    if scene not in config["scenes"]:
        raise ConfigError(f"scene '{scene}' is not in the config (have: {', '.join(config['scenes'])})")
    full = {**{k: config[k] for k in SPEC_SECTIONS if k != "scene"}, "scene": config["scenes"][scene]}
    return {"name": scene, **{k: full[k] for k in sections}}


def config_hash(values: dict) -> str:
    """sha256 of the canonical JSON of the config values that shaped an artifact."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stage_main(argv, stage: str, doc: str, inputs: dict[str, str | None], errors: tuple[type[Exception], ...],
               run: Callable[[argparse.Namespace, dict], str | None]) -> int:
    """The command line of a per-episode stage: ``python -m pipeline.<stage> --<input> A.zarr ...
    (--config config.yaml --scene NAME | --spec JSON) --out B.zarr``. ``inputs`` maps each input option
    to its help; ``run(args, cfg)`` gets the parsed options and the stage's config section and returns a
    summary line for stderr (or None). A config error, a bad artifact or one of ``errors`` prints
    ``error: ...`` and returns 2."""
    from .artifact import ArtifactError  # artifact imports this module

    ap = argparse.ArgumentParser(prog=f"python -m pipeline.{stage}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for option, help_text in inputs.items():
        ap.add_argument(f"--{option}", required=True, help=help_text)
    ap.add_argument("--config", help=f"config.yaml (with --scene): its {stage} section")
    ap.add_argument("--scene")
    ap.add_argument("--spec", help="the scene's validated config sections as JSON (what Snakemake passes)")
    ap.add_argument("--out", required=True, help=f"{stage} artifact to write (.zarr)")
    args = ap.parse_args(argv)
    try:
        spec = read_scene_spec(args.config, args.scene, args.spec)
        if stage not in spec:
            raise ConfigError(f"the spec has no {stage} section")
        summary = run(args, spec[stage])
    except (ConfigError, ArtifactError, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary:
        print(summary, file=sys.stderr)
    return 0


def read_scene_spec(config_path: str | None, scene: str | None, spec_json: str | None) -> dict:
    """The scene spec for a stage command: from ``--config FILE --scene NAME`` or ``--spec JSON``.

    Snakemake passes ``--spec`` (the validated section as JSON, so reruns follow config changes);
    by hand, ``--config config.yaml --scene bowling`` reads the same values.
    """
    if spec_json is not None:
        spec = read_mapping(spec_json, "--spec", "JSON")
        if set(spec) - {"name", *SPEC_SECTIONS} or "name" not in spec:
            raise ConfigError(f"--spec: expected 'name' and sections of {SPEC_SECTIONS}, got {sorted(spec)}")
        for section in set(spec) & set(SPEC_SECTIONS):
            validate_section(spec[section], SECTION_SCHEMA[section], f"--spec {section}")
        return spec
    if config_path is None or scene is None:
        raise ConfigError("give --config FILE and --scene NAME, or --spec JSON")
    return scene_spec(load_config(config_path), scene)
