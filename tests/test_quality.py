"""Quality reports: the figures' definitions on hand-made motions, and artifacts that do not fit their ground truth."""
import numpy as np

from pipeline.artifact import ArtifactWriter, put
from pipeline.quality.tracking import tracking_figures

from .conftest import run_module


def _ground_truth(frames: int = 5) -> dict:
    """One ball of 3 cm radius sliding 1 cm a frame along x, seen by two cameras."""
    rng = np.random.default_rng(0)
    surface = rng.normal(size=(1, 500, 3))
    surface *= 0.03 / np.linalg.norm(surface, axis=-1, keepdims=True)
    poses = np.tile(np.eye(4), (frames, 1, 1, 1))
    poses[:, 0, 0, 3] = 0.01 * np.arange(frames)
    return {"surface_points": surface, "poses": poses, "T_cw_color": np.tile(np.eye(4), (2, 1, 1))}


def test_tracking_errors_are_taken_over_the_tracked_frames():
    """A Gaussian 3 mm off at every frame after the first is 3 mm off on average: frame 0, where the true
    trajectory starts at the Gaussian, does not count (over all five frames the mean would be 2.4 mm)."""
    gt = _ground_truth()
    means0 = gt["surface_points"][0]
    means = means0[None] + gt["poses"][:, 0, :3, 3][:, None]
    means[1:, :, 2] += 0.003
    f = tracking_figures({"means": means}, gt)
    assert np.isclose(f["mte_mm"][0], 3.0), f
    assert f["delta_avg"][0] == 1.0 and f["survival"][0] == 1.0 and f["object_share"][0] == 1.0, f
    means[2:, :, 2] += 0.004  # 7 mm off from frame 2 on: half the errors over 5 mm
    f = tracking_figures({"means": means}, gt)
    assert np.isclose(f["mte_mm"][0], 6.0) and np.isclose(f["delta_avg"][0], 1 - 0.25 * 0.75), f


def test_report_refuses_an_artifact_of_other_frames_or_cameras(tmp_path):
    gt = _ground_truth()
    attrs = {"scene": "demo", "episode": "train_0000", "split": "train"}
    with ArtifactWriter(tmp_path / "gt.zarr", "groundtruth", "capture", {}, **attrs) as g:
        for name, value in gt.items():
            put(g, name, value)
    means = np.repeat(gt["surface_points"][0][None], 5, axis=0).astype(np.float32)
    for name, frames, cameras, expected in (("short", 4, ["a", "b"], "has 4 frames"),
                                            ("three", 5, ["a", "b", "c"], "has 3 cameras")):
        path = tmp_path / f"{name}.zarr"
        with ArtifactWriter(path, "tracking", "tracking", {}, **attrs, camera_names=cameras, method="m") as g:
            put(g, "means", means[:frames])
        result = run_module("pipeline.quality", "tracking", "--tracking", str(path), "--groundtruth",
                            str(tmp_path / "gt.zarr"), "--out", str(tmp_path / f"{name}.csv"))
        assert result.returncode == 2 and expected in result.stderr and str(path) in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / f"{name}.csv").exists()
