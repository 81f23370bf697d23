"""Synthetic capture: ground truth agrees with itself, seeds reproduce, killed jobs leave nothing accepted."""
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import zarr

from pipeline.artifact import ArtifactError, ArtifactWriter, open_artifact
from pipeline.capture import write_episode
from pipeline.config import scene_spec
from pipeline.quality.capture import (charuco_corner_fraction, depth_surface_error_mm, ir_disparity_errors,
                                      mask_point_agreement)

from .conftest import ROOT, run_module

pytestmark = pytest.mark.slow


def test_capture_follows_the_artifact_contract(bowling_episode, small_config):
    cap_path, gt_path = bowling_episode
    cap, gt = open_artifact(cap_path, "capture"), open_artifact(gt_path, "groundtruth")
    C, T = 4, small_config["scenes"]["bowling"]["frames"]
    w, h = small_config["rig"]["color"]["resolution"]
    assert cap["color"].shape == (C, T, h, w, 3) and cap["color"].dtype == np.uint8
    assert cap["depth"].dtype == np.uint16 and cap["ir_left"].shape == (C, T, h, w)
    for key in ("schema", "schema_version", "stage", "config", "config_hash", "code_version", "units",
                "frame_conventions", "scene", "episode", "split"):
        assert key in cap.attrs and key in gt.attrs
    assert cap.attrs["frame_conventions"]["world"].startswith("right-handed, metres, z up")
    # The pipeline's inputs carry no ground truth: no true array, and no config that says where the cameras
    # stand or could regenerate the scene (the ground truth's config does; the capture keeps its hash).
    assert not {"poses", "ids_color", "depth_color", "T_cw_color"} & set(cap.keys())
    assert set(cap.attrs["config"]) == {"name", "rig"} and "scene" in gt.attrs["config"]
    assert "position" not in json.dumps(cap.attrs["config"]) and "look_at" not in cap.attrs["config"]["rig"]
    assert cap.attrs["generator_config_hash"] == gt.attrs["config_hash"]
    assert gt["poses"].shape == (T, 11, 4, 4)
    # Pins start upright on the table: their lowest surface point at z = 0.
    assert np.allclose(gt["poses"][0, 1:, 2, 2], 1, atol=1e-6)
    pose0 = gt["poses"][0, 1:]
    surface = np.einsum("kij,ksj->ksi", pose0[:, :3, :3], gt["surface_points"][1:]) + pose0[:, None, :3, 3]
    assert np.abs(surface[..., 2].min(axis=1)).max() < 5e-4


def test_ground_truth_agrees_with_itself(bowling_episode):
    cap, gt = open_artifact(bowling_episode[0], "capture"), open_artifact(bowling_episode[1], "groundtruth")
    assert mask_point_agreement(gt) >= 0.99
    assert depth_surface_error_mm(gt) < 1.0
    errs = ir_disparity_errors(cap, gt, max_points=60)
    assert len(errs) > 200
    assert np.median(errs) < 0.25 and (errs < 0.5).mean() > 0.95


def test_self_consistency_check_catches_a_wrong_camera(bowling_episode):
    """The agreement figure can fail: shift the true intrinsics by 2 pixels and it drops."""
    gt = open_artifact(bowling_episode[1], "groundtruth")
    tampered = {k: gt[k][:] for k in ("poses", "surface_points", "surface_normals", "ids_color", "depth_color",
                                      "K_color", "T_cw_color", "object_ids")}
    tampered["K_color"][:, 0, 2] += 2.0
    assert mask_point_agreement(tampered) < 0.95


def test_quality_report_rows(bowling_episode, tmp_path):
    import csv

    report = tmp_path / "capture.csv"
    result = run_module("pipeline.quality", "capture", "--capture", str(bowling_episode[0]),
                        "--groundtruth", str(bowling_episode[1]), "--out", str(report))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(report.open()))
    metrics = {r["metric"]: float(r["value"]) for r in rows}
    assert metrics["mask_point_agreement"] >= 0.99
    assert 0 < metrics["sensor_mae_mm"] < 5 and 0.5 < metrics["sensor_valid_frac"] <= 1
    assert {r["against"] for r in rows} == {"gt"} and {r["stage"] for r in rows} == {"capture"}


def test_same_seed_same_arrays(bowling_episode, small_config, tmp_path):
    cap2, gt2 = tmp_path / "c.zarr", tmp_path / "g.zarr"
    write_episode(scene_spec(small_config, "bowling"), "train_0000", str(cap2), str(gt2))
    for a, b in ((bowling_episode[0], cap2), (bowling_episode[1], gt2)):
        ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
        assert sorted(ga.keys()) == sorted(gb.keys())
        for key in ga.keys():
            np.testing.assert_array_equal(ga[key][:], gb[key][:], err_msg=f"{b}/{key}")
        assert ga.attrs["config_hash"] == gb.attrs["config_hash"]


def test_another_episode_differs(small_config, tmp_path, bowling_episode):
    cap2, gt2 = tmp_path / "c.zarr", tmp_path / "g.zarr"
    write_episode(scene_spec(small_config, "bowling"), "train_0001", str(cap2), str(gt2))
    p0 = open_artifact(bowling_episode[1], "groundtruth")["poses"][0]
    p1 = open_artifact(gt2, "groundtruth")["poses"][0]
    assert np.abs(p0[0, :3, 3] - p1[0, :3, 3]).max() > 1e-3  # the ball starts elsewhere


def test_cube_stacks_topple(small_config, tmp_path):
    from pipeline import config as cfgmod

    cfg = json.loads(json.dumps(small_config))
    cfg["scenes"]["cube_stacks"]["frames"] = 30
    cfg["rig"]["color"]["resolution"] = cfg["rig"]["depth"]["resolution"] = [32, 24]
    cfgmod.validate_config(cfg)
    write_episode(scene_spec(cfg, "cube_stacks"), "train_0000", str(tmp_path / "c.zarr"), str(tmp_path / "g.zarr"))
    poses = open_artifact(tmp_path / "g.zarr", "groundtruth")["poses"][:]
    fall = poses[0, :, 2, 3] - poses[-1, :, 2, 3]
    assert fall.max() > 0.03, f"no cube fell: height drops {fall}"
    assert (poses[-1, :, 2, 3] > 0.0225 - 1e-3).all(), "a cube sank into the table (centres 22.5 mm up at rest)"


def test_calibration_sequence_shows_the_board(small_config, tmp_path):
    from pipeline import config as cfgmod

    cfg = json.loads(json.dumps(small_config))
    cfg["rig"]["color"]["resolution"] = [424, 240]
    cfgmod.validate_config(cfg)
    write_episode(scene_spec(cfg, "bowling"), "calibration", str(tmp_path / "c.zarr"), str(tmp_path / "g.zarr"))
    cap, gt = open_artifact(tmp_path / "c.zarr", "capture"), open_artifact(tmp_path / "g.zarr", "groundtruth")
    assert cap.attrs["sequence"] == "calibration"
    assert charuco_corner_fraction(cap, gt.attrs["board"]) > 0.5
    # Frame 0 anchors the world: the board lies flat at the origin.
    T = gt["T_world_board"][0]
    assert np.allclose(T[:3, 2], [0, 0, -1], atol=1e-9)
    assert depth_surface_error_mm(gt) < 1.0


def test_incomplete_or_foreign_artifacts_are_refused(tmp_path):
    with pytest.raises(RuntimeError):
        with ArtifactWriter(tmp_path / "a.zarr", "capture", "capture", {}) as g:
            g.create_array("x", shape=(2,), dtype="f4")
            raise RuntimeError("killed")
    assert not (tmp_path / "a.zarr").exists() and not list(tmp_path.iterdir())
    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="w")
    g.attrs.update(schema="capture", schema_version=1, complete=False)
    with pytest.raises(ArtifactError, match="incomplete"):
        open_artifact(tmp_path / "b.zarr", "capture")
    g.attrs.update(complete=True, schema_version=99)
    with pytest.raises(ArtifactError, match="version 99"):
        open_artifact(tmp_path / "b.zarr", "capture")
    with pytest.raises(ArtifactError, match="expected a 'groundtruth'"):
        open_artifact(tmp_path / "b.zarr", "groundtruth")


def test_killed_capture_leaves_nothing_that_is_accepted(small_config_file, tmp_path):
    cap, gt = tmp_path / "cap.zarr", tmp_path / "gt.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.capture", "--config", str(small_config_file),
                             "--scene", "bowling", "--episode", "val_0000", "--capture", str(cap),
                             "--groundtruth", str(gt)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    # Kill it once it has written a frame (tqdm says 1/4; its first line, 0/4, comes before any).
    for line in iter(proc.stderr.readline, ""):
        if "frame" in line and "1/4" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not cap.exists() and not gt.exists()
    partial = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert partial, "the writer should have been killed mid-way"
    for p in partial:
        with pytest.raises(ArtifactError):
            open_artifact(p, "capture" if p.name.startswith("cap") else "groundtruth")
    # A rerun replaces the leftovers' role with a complete artifact.
    result = run_module("pipeline.capture", "--config", str(small_config_file), "--scene", "bowling",
                        "--episode", "val_0000", "--capture", str(cap), "--groundtruth", str(gt))
    assert result.returncode == 0, result.stderr
    assert open_artifact(cap, "capture").attrs["complete"] is True


def test_inspect_prints_the_tree_and_draws_the_contact_sheet(bowling_episode, tmp_path):
    png = tmp_path / "sheet.png"
    result = run_module("pipeline", "inspect", str(bowling_episode[0]), "--png", str(png))
    assert result.returncode == 0, result.stderr
    assert "color  (4, 4, 120, 160, 3) uint8" in result.stdout and "@schema = \"capture\"" in result.stdout
    import cv2

    sheet = cv2.imread(str(png))
    assert sheet.shape[0] == 4 * 120 and sheet.shape[1] == 3 * 3 * 160  # cameras x (frames x colour/depth/IR)
    assert sheet.std() > 10
    assert not list(tmp_path.glob("*.partial*"))
    result = run_module("pipeline", "inspect", str(tmp_path / "missing.zarr"))
    assert result.returncode != 0 and "missing.zarr" in result.stderr
    (tmp_path / "folder.png").mkdir()
    for target, message in (("sheet.xyz", "a picture is written as .png"), ("folder.png", "is a folder")):
        result = run_module("pipeline", "inspect", str(bowling_episode[0]), "--png", str(tmp_path / target))
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_readme_scene_example_needs_no_code(small_config, tmp_path):
    """README's 'Adding a scene' example validates and captures: balls roll into the brick stacks."""
    import re

    import yaml

    from pipeline import config as cfgmod

    block = re.search(r"```yaml\n(scenes:\n  wall:.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    cfg = json.loads(json.dumps(small_config))
    cfg["scenes"].update(yaml.safe_load(block)["scenes"])
    cfg["rig"]["color"]["resolution"] = cfg["rig"]["depth"]["resolution"] = [32, 24]
    cfg["scenes"]["wall"]["frames"] = 12
    cfgmod.validate_config(cfg)
    write_episode(scene_spec(cfg, "wall"), "val_0000", str(tmp_path / "c.zarr"), str(tmp_path / "g.zarr"))
    gt = open_artifact(tmp_path / "g.zarr", "groundtruth")
    poses = gt["poses"][:]
    assert poses.shape[1] == 9 and gt.attrs["object_names"][:3] == ["ball_0", "ball_1", "ball_2"]
    assert (poses[-1, :3, 0, 3] - poses[0, :3, 0, 3] > 0.1).all()  # the balls rolled forward
