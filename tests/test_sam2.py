"""The sam2 masks backend and video propagation, run on CPU with a tiny random-weight SAM2.

No SAM2 weights can be downloaded here, so a SAM2.1-tiny config shrunk by hydra overrides (Hiera trunk
of 5 blocks, 16 channels, 128 px input) is built with random weights and saved as a checkpoint. Its
masks mean nothing; what is tested is the plumbing: shapes, the mapping from the model's 128 px back
to the video's resolution, prompt generation and id bookkeeping, and errors.
"""
import copy
import json

import numpy as np
import pytest
import yaml

from pipeline.artifact import open_artifact
from pipeline.config import validate_config
from pipeline.masks import FusedFrames
from pipeline.sam2_masks import ids_from_logits, prompts_for

from .conftest import external, run_module
from .test_masks import _calibration_from

EMBED = 16
TINY_SAM2 = ["++model.image_size=128", f"++model.image_encoder.trunk.embed_dim={EMBED}",
             "++model.image_encoder.trunk.num_heads=1", "++model.image_encoder.trunk.stages=[1,1,2,1]",
             "++model.image_encoder.trunk.global_att_blocks=[3]",
             f"++model.image_encoder.neck.backbone_channel_list=[{8 * EMBED},{4 * EMBED},{2 * EMBED},{EMBED}]",
             "++model.memory_attention.num_layers=1", "++model.memory_attention.layer.dim_feedforward=256",
             "++model.memory_encoder.fuser.num_layers=1", "++model.num_maskmem=3"]


@pytest.fixture(scope="module")
def tiny_sam2(tmp_path_factory):
    """masks.sam2 config section naming a random-weight tiny SAM2 checkpoint."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    model = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu",
                                       hydra_overrides_extra=TINY_SAM2)
    path = tmp_path_factory.mktemp("sam2") / "tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return {"model_config": "configs/sam2.1/sam2.1_hiera_t.yaml", "checkpoint": str(path),
            "hydra_overrides": TINY_SAM2, "device": "cpu"}


def test_ids_from_logits_takes_the_strongest_positive_object():
    import torch

    logits = torch.tensor([[[[2.0, -1.0, 0.5]]], [[[1.0, -3.0, 3.0]]]])  # 2 objects, 1x3 pixels
    assert ids_from_logits([4, 7], logits).tolist() == [[4, 0, 7]]


@pytest.fixture(scope="module")
def episode_inputs(bowling_episode, default_config, tmp_path_factory):
    """Sensor depth and the true calibration of the small bowling episode."""
    tmp = tmp_path_factory.mktemp("sam2-episode")
    cap = open_artifact(bowling_episode[0], "capture")
    spec = json.dumps({"name": "bowling", "depth": {**default_config["depth"], "method": "sensor"}})
    assert run_module("pipeline.depth", "--capture", str(bowling_episode[0]), "--spec", spec,
                      "--out", str(tmp / "depth.zarr")).returncode == 0
    _calibration_from(bowling_episode[1], tmp / "cal.zarr", list(cap.attrs["camera_names"]))
    return bowling_episode[0], tmp / "depth.zarr", tmp / "cal.zarr"


def _masks_spec(config, sam2: dict) -> dict:
    masks = copy.deepcopy(config["masks"])
    masks["backend"] = "sam2"
    masks["sam2"].update(sam2)
    return validate_config({**copy.deepcopy(config), "masks": masks})["masks"]


@pytest.mark.slow
def test_sam2_backend_masks_an_episode_with_automatic_prompts(episode_inputs, small_config, tiny_sam2, tmp_path):
    capture, depth, cal = episode_inputs
    masks = _masks_spec(small_config, tiny_sam2)
    out = tmp_path / "masks.zarr"
    result = run_module("pipeline.masks", "--capture", str(capture), "--depth", str(depth), "--calibration",
                        str(cal), "--spec", json.dumps({"name": "bowling", "masks": masks}), "--out", str(out))
    assert result.returncode == 0, result.stderr
    art = open_artifact(out, "masks")
    colour = open_artifact(capture, "capture")["color"]
    assert art["ids"].shape == colour.shape[:4]  # 160x120 video, 128 px model: masks at the video's size
    assert art.attrs["backend"] == "sam2"
    # Prompts: one 3D cluster per object, projected into each view that sees it, same id everywhere.
    frames = FusedFrames(open_artifact(depth, "depth"), colour, open_artifact(cal, "calibration")["T_cw_color"][:],
                         masks, str(depth))
    names = list(open_artifact(capture, "capture").attrs["camera_names"])
    prompts = prompts_for(frames, names, masks["sam2"], colour.shape[2:4])
    n_clusters = int(frames.first_objects()[-1].max())
    assert n_clusters >= 5 and art.attrs["n_objects"] == n_clusters
    assert set().union(*prompts) == set(range(1, n_clusters + 1))
    for c, view in enumerate(prompts):
        assert len(view) >= n_clusters // 2, f"camera {c} prompts only {sorted(view)}"
        for p in view.values():
            x0, y0, x1, y1 = p["box"]
            u, v = p["points"][0]
            assert 0 <= x0 <= u <= x1 < 160 and 0 <= y0 <= v <= y1 < 120
        assert set(np.unique(art["ids"][c])) <= {0, *view}  # a view's ids are the ones prompted there


@pytest.mark.slow
def test_sam2_backend_errors(episode_inputs, default_config, tiny_sam2, tmp_path):
    capture, depth, cal = episode_inputs
    out = tmp_path / "masks.zarr"

    def run(sam2):
        spec = json.dumps({"name": "bowling", "masks": _masks_spec(default_config, sam2)})
        return run_module("pipeline.masks", "--capture", str(capture), "--depth", str(depth), "--calibration",
                          str(cal), "--spec", spec, "--out", str(out))

    result = run({**tiny_sam2, "checkpoint": str(tmp_path / "missing.pt")})
    assert result.returncode == 2 and "masks/sam2/checkpoint" in result.stderr and "missing.pt" in result.stderr
    result = run({**tiny_sam2, "hydra_overrides": []})  # tiny weights do not fit the full-size model
    assert result.returncode == 2 and "does not load" in result.stderr
    result = run({**tiny_sam2, "prompts": [{"camera": "cam9", "object": 1, "box": [0, 0, 10, 10]}]})
    assert result.returncode == 2 and "masks/sam2/prompts/0/camera" in result.stderr and "cam9" in result.stderr
    for prompt, message in (({"frame": 99, "box": [0, 0, 10, 10]}, "prompts/0/frame': 99, the episode has frames"),
                            ({"points": [[5, 5], [9, 9]], "point_labels": [1]}, "prompts/0/point_labels': 1 labels"),
                            ({"box": [0, 0, 10, 500]}, "prompts/0/box': (10, 500) lies outside")):
        result = run({**tiny_sam2, "prompts": [{"camera": "cam1", "object": 1, **prompt}]})
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not out.exists() and not list(tmp_path.glob("masks.zarr.partial*"))


@pytest.mark.slow
def test_sam2_backend_with_prompts_from_the_config(episode_inputs, default_config, tiny_sam2, tmp_path):
    capture, depth, cal = episode_inputs
    prompts = [{"camera": "cam1", "object": 3, "box": [40, 30, 90, 80]},
               {"camera": "cam1", "object": 5, "points": [[20, 20], [30, 25]], "point_labels": [1, 0]}]
    masks = _masks_spec(default_config, {**tiny_sam2, "prompts": prompts})
    out = tmp_path / "masks.zarr"
    result = run_module("pipeline.masks", "--capture", str(capture), "--depth", str(depth), "--calibration",
                        str(cal), "--spec", json.dumps({"name": "bowling", "masks": masks}), "--out", str(out))
    assert result.returncode == 0, result.stderr
    ids = open_artifact(out, "masks")["ids"][:]
    assert not ids[[0, 2, 3]].any()  # only cam1 was prompted
    assert set(np.unique(ids[1])) <= {0, 3, 5}
    assert open_artifact(out, "masks").attrs["n_objects"] == 5  # ids 1..5, of which 3 and 5 prompted


@pytest.mark.slow
def test_video_propagation_on_davis(tiny_sam2, default_config, tmp_path):
    """DAVIS blackswan: the offline propagation follows the swan (J over 49 frames); the sam2 code path
    runs on the real frames (random weights: masks of the right size and ids only)."""
    data = external("davis2016-blackswan")
    report = tmp_path / "quality.csv"
    result = run_module("pipeline.video_masks", "--frames", str(data / "JPEGImages"), "--first-mask",
                        str(data / "Annotations" / "00000.png"), "--annotations", str(data / "Annotations"),
                        "--out", str(tmp_path / "offline"), "--report", str(report))
    assert result.returncode == 0, result.stderr
    j = float(report.read_text().splitlines()[1].split(",")[6])
    assert j >= 0.85, f"offline J {j}"

    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((data / "JPEGImages").glob("*.jpg"))[:6]:
        (frames / p.name).symlink_to(p)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**default_config, "masks": _masks_spec(default_config, tiny_sam2)}))
    result = run_module("pipeline.video_masks", "--frames", str(frames), "--first-mask",
                        str(data / "Annotations" / "00000.png"), "--backend", "sam2", "--config", str(config),
                        "--out", str(tmp_path / "sam2"))
    assert result.returncode == 0, result.stderr
    import cv2

    out = sorted((tmp_path / "sam2").glob("*.png"))
    assert len(out) == 6
    ids = np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in out])
    assert ids.shape == (6, 480, 854) and set(np.unique(ids)) <= {0, 1}


def test_video_masks_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, message in (("empty", "no frames"), ("missing", "not a folder")):
        result = run_module("pipeline.video_masks", "--frames", str(tmp_path / folder), "--first-mask",
                            str(tmp_path / "m.png"), "--out", str(tmp_path / "out"))
        assert result.returncode == 2 and message in result.stderr and str(tmp_path / folder) in result.stderr
        assert not (tmp_path / "out").exists()


def test_read_ids_of_palette_grey_and_colour_masks(tmp_path):
    """DAVIS stores ids as palette indices (objects 1 and 2 drawn dark red and dark green, both with no
    blue); grey masks hold the ids themselves (0/255: one object); colour masks one id per colour."""
    from PIL import Image

    from pipeline.video_masks import read_ids

    ids = np.zeros((4, 6), np.uint8)
    ids[1, 1:3], ids[2, 3:5] = 1, 2
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    palette.save(tmp_path / "palette.png")
    Image.fromarray(ids * 127).save(tmp_path / "grey.png")
    Image.fromarray((ids == 1).astype(np.uint8) * 255).save(tmp_path / "binary.png")
    colours = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0]], np.uint8)[ids]
    Image.fromarray(colours).save(tmp_path / "colour.png")
    assert np.array_equal(read_ids(tmp_path / "palette.png", (4, 6)), ids)
    assert np.array_equal(read_ids(tmp_path / "grey.png", (4, 6)), ids * 127)
    assert np.array_equal(read_ids(tmp_path / "binary.png", (4, 6)), (ids == 1).astype(np.uint16))
    coloured = read_ids(tmp_path / "colour.png", (4, 6))
    assert set(np.unique(coloured)) == {0, 1, 2} and np.array_equal(coloured > 0, ids > 0)
    assert len(np.unique(coloured[ids == 1])) == 1 and len(np.unique(coloured[ids == 2])) == 1
