"""Masks (offline backend): clustering, rigid tracking of ids, the stage on an episode, and bad input."""
import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.artifact import ArtifactWriter, open_artifact, put
from pipeline.masks import MasksError, connected_objects, kabsch, predict, propagate, write_masks
from pipeline.quality.masks import mask_figures

from .conftest import run_module

CFG = {"voxel_m": 0.006, "min_points": 20, "track_radius_m": 0.015, "reattach_radius_m": 0.05,
       "icp_iterations": 3}


def _box(centre, rng, n=400, size=(0.04, 0.04, 0.08)):
    return rng.uniform(-0.5, 0.5, (n, 3)) * size + centre


def test_connected_objects_separates_and_drops_noise():
    rng = np.random.default_rng(0)
    pts = np.concatenate([_box([0, 0, 0.05], rng, 3000), _box([0.1, 0, 0.05], rng, 3000),
                          rng.uniform(0.3, 0.31, (5, 3))])
    labels = connected_objects(pts, 0.006, 20)
    assert len(set(labels[:3000])) == 1 and len(set(labels[3000:6000])) == 1
    assert {labels[0], labels[3000]} == {1, 2}
    assert (labels[6000:] == 0).all()


def test_kabsch_recovers_a_rigid_motion():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    R = Rotation.from_rotvec([0.2, -0.4, 0.9]).as_matrix()
    R_est, t_est = kabsch(src, src @ R.T + [0.1, -0.2, 0.3])
    assert np.allclose(R_est, R, atol=1e-9) and np.allclose(t_est, [0.1, -0.2, 0.3], atol=1e-9)


def test_ids_follow_fast_objects_that_pass_close_to_each_other():
    """Two boxes moving 3 cm per frame towards each other and spinning keep their ids until they touch."""
    rng = np.random.default_rng(2)
    shape = _box([0, 0, 0], rng)
    prev_pts, prev_lab, next_id, velocity, centres = None, None, 3, {}, {}
    for t in range(6):
        spin = Rotation.from_rotvec([0, 0, 0.3 * t]).as_matrix()
        a = shape @ spin.T + [-0.2 + 0.03 * t, 0, 0.05]
        b = shape @ spin.T + [0.2 - 0.03 * t, 0.005, 0.05]
        pts = np.concatenate([a, b]) + rng.normal(0, 0.001, (800, 3))
        if t == 0:
            labels = connected_objects(pts, CFG["voxel_m"], CFG["min_points"])
            first = labels[0], labels[400]
        else:
            labels, next_id = propagate(pts, predict(prev_pts, prev_lab, velocity), prev_lab, CFG, next_id)
        assert (labels[:400] == first[0]).mean() > 0.99 and (labels[400:] == first[1]).mean() > 0.99, t
        now = {k: pts[labels == k].mean(axis=0) for k in (1, 2)}
        velocity = {k: now[k] - centres[k] for k in now if k in centres}
        prev_pts, prev_lab, centres = pts, labels, now
    assert next_id == 3  # no spurious new objects


def _calibration_from(gt_path, out, names):
    """A calibration artifact holding the true cameras: the masks stage tested on its own."""
    gt = open_artifact(gt_path, "groundtruth")
    with ArtifactWriter(out, "calibration", "calibration", {}, scene="bowling", episode="calibration",
                        split="calibration", camera_names=names, intrinsics_source="recording") as g:
        put(g, "T_cw_color", gt["T_cw_color"][:])


@pytest.mark.slow
def test_masks_stage_on_a_small_episode(bowling_episode, default_config, tmp_path):
    cap = open_artifact(bowling_episode[0], "capture")
    names = list(cap.attrs["camera_names"])
    depth, cal, masks = tmp_path / "depth.zarr", tmp_path / "cal.zarr", tmp_path / "masks.zarr"
    spec = json.dumps({"name": "bowling", "depth": {**default_config["depth"], "method": "sensor"},
                       "masks": default_config["masks"]})
    assert run_module("pipeline.depth", "--capture", str(bowling_episode[0]), "--spec", spec,
                      "--out", str(depth)).returncode == 0
    _calibration_from(bowling_episode[1], cal, names)
    result = run_module("pipeline.masks", "--depth", str(depth), "--calibration", str(cal), "--spec", spec,
                        "--out", str(masks))
    assert result.returncode == 0, result.stderr
    art = open_artifact(masks, "masks")
    assert art["ids"].shape == cap["color"].shape[:4]
    figures = mask_figures(art, open_artifact(bowling_episode[1], "groundtruth"))
    # 160x120 and 4 frames: pins are a few pixels wide; the figures here guard against breakage.
    assert figures["id_consistency"][0] > 0.8 and figures["miou"][0] > 0.4


@pytest.mark.slow
def test_masks_bad_input(bowling_episode, default_config, tmp_path):
    depth, cal = tmp_path / "depth.zarr", tmp_path / "cal.zarr"
    spec = json.dumps({"name": "bowling", "depth": {**default_config["depth"], "method": "sensor"}})
    assert run_module("pipeline.depth", "--capture", str(bowling_episode[0]), "--spec", spec,
                      "--out", str(depth)).returncode == 0
    _calibration_from(bowling_episode[1], cal, ["a", "b", "c", "d"])
    with pytest.raises(MasksError, match="calibrates cameras"):
        write_masks(str(depth), str(cal), default_config["masks"], str(tmp_path / "m.zarr"))
    _calibration_from(bowling_episode[1], cal, ["cam0", "cam1", "cam2", "cam3"])
    high = {**default_config["masks"], "table_clearance_m": 0.3}
    with pytest.raises(MasksError, match="nothing stands above the table"):
        write_masks(str(depth), str(cal), high, str(tmp_path / "m.zarr"))
    assert not (tmp_path / "m.zarr").exists()
