"""Config validation: unknown keys, wrong types, unknown shapes and missing fields are errors that name the key."""
import copy

import pytest
import yaml

from pipeline.config import ConfigError, episode_names, load_config, validate_config

from .conftest import ROOT, run_module


def test_default_config_is_valid_and_fills_defaults(default_config):
    assert set(default_config["scenes"]) >= {"bowling", "cube_stacks"}
    assert default_config["rig"]["depth"]["baseline_m"] == pytest.approx(0.095)
    assert episode_names(default_config["scenes"]["bowling"])[0] == "train_0000"


@pytest.mark.parametrize(
    "edit, names",
    [
        (lambda c: c["rig"].update(colour_gain=2.0), ["rig", "colour_gain"]),  # unknown key
        (lambda c: c["rig"]["depth"].update(baseline_m="95mm"), ["rig/depth/baseline_m"]),  # wrong type
        (lambda c: c["scenes"]["bowling"]["objects"][0]["shape"].update(type="torus"), ["scenes/bowling/objects/0/shape"]),
        (lambda c: c["scenes"]["bowling"]["objects"][0].pop("mass"), ["scenes/bowling/objects/0", "mass"]),
        (lambda c: c["scenes"]["bowling"]["episodes"].update(train=-1), ["scenes/bowling/episodes/train"]),
        (lambda c: c["rig"]["cameras"][0].update(position=[0.3, 0.2]), ["rig/cameras/0/position"]),
        (lambda c: c["scenes"]["bowling"].update(frames=30.0), ["scenes/bowling/frames", "integer"]),
    ],
    ids=["unknown-key", "wrong-type", "unknown-shape", "missing-field", "negative-count", "short-vector",
         "float-for-integer"],
)
def test_bad_config_names_the_key(default_config, edit, names):
    cfg = copy.deepcopy(default_config)
    edit(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    for name in names:
        assert name in str(err.value)


def test_bad_config_exits_non_zero_from_the_command_line(default_config, tmp_path):
    cfg = copy.deepcopy(default_config)
    cfg["scenes"]["bowling"]["objects"][0]["shape"] = {"type": "torus", "radius": 0.03}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cap.zarr"
    result = run_module("pipeline.capture", "--config", str(path), "--scene", "bowling", "--episode", "train_0000",
                        "--capture", str(out), "--groundtruth", str(tmp_path / "gt.zarr"))
    assert result.returncode != 0
    assert "scenes/bowling/objects/0/shape" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("spec, expected", [('{"name": "bowling", "depth": {', "--spec: not valid JSON"),
                                            ('["bowling"]', "--spec: expected a JSON object")])
def test_malformed_spec_is_a_config_error(spec, expected, tmp_path):
    out = tmp_path / "depth.zarr"
    result = run_module("pipeline.depth", "--capture", str(tmp_path / "capture.zarr"), "--spec", spec,
                        "--out", str(out))
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


def test_unknown_scene_and_episode(small_config_file, tmp_path):
    result = run_module("pipeline.capture", "--config", str(small_config_file), "--scene", "bowling",
                        "--episode", "train_0099", "--capture", str(tmp_path / "c.zarr"),
                        "--groundtruth", str(tmp_path / "g.zarr"))
    assert result.returncode != 0 and "train_0099" in result.stderr
    with pytest.raises(ConfigError, match="snooker"):
        from pipeline.config import scene_spec

        scene_spec(load_config(ROOT / "config.yaml"), "snooker")
