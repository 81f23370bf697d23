"""Depth: the matcher on real and synthetic pairs, registration, the stage against ground truth, bad input."""
import json

import cv2
import numpy as np
import pytest

from pipeline.artifact import ArtifactWriter, open_artifact, put
from pipeline.depth import DepthError, write_depth
from pipeline.geometry import make_T
from pipeline.quality.depth import bad1_fraction, depth_figures
from pipeline.stereo import MatcherParams, match, register

from .conftest import external, run_module


def _params(default_config, **change):
    return MatcherParams(**{**default_config["depth"]["matcher"], **change})


def test_tsukuba_bad1(default_config):
    root = external("opencv-contrib-stereo")
    left = cv2.imread(str(root / "imL2l.bmp"), cv2.IMREAD_GRAYSCALE)
    right = cv2.imread(str(root / "imL2.bmp"), cv2.IMREAD_GRAYSCALE)
    gt = cv2.imread(str(root / "groundtruth.bmp"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 16.0
    # Tsukuba's disparities lie within 3-18 px: the configured matcher with that search. Its 384 px pairs
    # are matched at twice their resolution as the 424 px pairs of a D455's smaller mode are (0.0475;
    # at their own resolution, the rig's 848 px setting, 0.052).
    assert bad1_fraction(left, right, gt, _params(default_config, num_disparities=16, min_disparity=3,
                                                  upsample=2)) <= 0.05


def test_subpixel_disparity_of_a_shifted_random_dot_pair(default_config):
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (120, 400)).astype(np.float32), (0, 0), 1.0)
    shift = 23.4
    left = texture[:, 60:300]
    xs = np.arange(60, 300, dtype=np.float32) + shift  # right(x - d) = left(x)
    right = cv2.remap(texture, np.tile(xs, (120, 1)), np.tile(np.arange(120, dtype=np.float32)[:, None], (1, 240)),
                      cv2.INTER_CUBIC)
    disparity, matched = match(left.astype(np.uint8), right.astype(np.uint8),
                               _params(default_config, num_disparities=32, min_disparity=3))
    inner = disparity[10:-10, 80:-10]
    assert matched[10:-10, 80:-10].mean() > 0.95
    # SGBM's parabola interpolation pulls towards whole pixels ("pixel locking"): 0.2 px at a 0.4 px phase.
    assert abs(np.median(inner) - shift) < 0.25


@pytest.mark.parametrize("upsample", [1, 2])
def test_the_nearest_depth_is_the_largest_disparity_matched(default_config, upsample):
    """A plane at the largest disparity the range holds (min + num - 1 matched pixels) is found; one a
    pixel nearer is not: ``nearest_depth_m`` is where the range ends."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (60, 200)).astype(np.float32), (0, 0), 1.0)
    params = _params(default_config, num_disparities=16, min_disparity=3, upsample=upsample)
    largest = params.min_disparity + params.num_disparities - 1 / upsample
    assert params.nearest_depth_m(focal_px=100.0, baseline_m=0.05) == pytest.approx(100.0 * 0.05 / largest)
    found = []
    for d in (largest, largest + 1):
        xs = np.arange(40, 160, dtype=np.float32) + d  # right(x - d) = left(x)
        right = cv2.remap(texture, np.tile(xs, (60, 1)), np.tile(np.arange(60, dtype=np.float32)[:, None], (1, 120)),
                          cv2.INTER_CUBIC)
        disparity, matched = match(texture[:, 40:160].astype(np.uint8), right.astype(np.uint8), params)
        found.append(np.mean(matched[5:-5, 30:-5] & (np.abs(disparity[5:-5, 30:-5] - d) < 0.5)))
    assert found[0] > 0.9 and found[1] < 0.1, found


def _box_over_plane_pair(box, d_near=24, d_far=10, shape=(80, 200)):
    """A random-dot rectified pair (uint8 left, right) of a fronto-parallel box (rows y0:y1, left-image
    columns x0:x1, disparity ``d_near``) in front of a plane (``d_far``), and the true left disparity."""
    rng = np.random.default_rng(1)
    H, W = shape
    y0, y1, x0, x1 = box
    far, near = (cv2.GaussianBlur(rng.uniform(0, 255, (H, W + 40)).astype(np.float32), (0, 0), 0.8) for _ in range(2))
    left, right = far[:, :W].copy(), far[:, d_far:W + d_far].copy()  # right(x) sees the left image's point x + d
    truth = np.full((H, W), float(d_far), np.float32)
    left[y0:y1, x0:x1] = near[y0:y1, x0:x1]
    right[y0:y1, x0 - d_near:x1 - d_near] = near[y0:y1, x0:x1]
    truth[y0:y1, x0:x1] = d_near
    return np.clip(left, 0, 255).astype(np.uint8), np.clip(right, 0, 255).astype(np.uint8), truth


@pytest.mark.parametrize("upsample, bound", [(1, 0.93), (2, 0.95)])
def test_the_pixel_wise_pass_restores_foreground_edges(default_config, upsample, bound):
    y0, y1, x0, x1 = box = (20, 60, 80, 130)
    left, right, truth = _box_over_plane_pair(box=box)
    rim = np.zeros(truth.shape, bool)  # the box's outermost two pixels
    rim[y0:y1, x0:x1] = True
    rim[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = False
    share, matched = {}, {}
    for edge_block_size in (0, 1):
        disparity, matched[edge_block_size] = match(
            left, right, _params(default_config, num_disparities=32, min_disparity=0, upsample=upsample,
                                 edge_block_size=edge_block_size))
        share[edge_block_size] = (np.abs(disparity - truth)[rim] <= 1).mean()
    # The 3x3 block pass loses some of the rim to the plane behind (0.90 of it right at 1x, 0.95 on the 2x
    # upsampled pair); the pixel-wise pass gives part of it back.
    assert share[1] >= bound and share[1] > share[0]
    # Pixels either pass measures count as measured.
    assert (matched[1] >= matched[0]).all() and matched[1].sum() > matched[0].sum()


def _plane_depth(K, size, n, d):
    """Depth (H,W) of the plane n.x = d seen by a camera K at the origin."""
    W, H = size
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    return (d / (rays @ n)).astype(np.float32)


def test_registration_of_a_slanted_plane_is_exact():
    K_src = np.array([[110.0, 0, 49.5], [0, 110.0, 39.5], [0, 0, 1]])
    K = np.array([[100.0, 0, 39.5], [0, 100.0, 29.5], [0, 0, 1]])
    n = np.array([0.3, -0.2, 1.0]) / np.linalg.norm([0.3, -0.2, 1.0])  # tilted 20 degrees from the view axis
    src = _plane_depth(K_src, (100, 80), n, 0.8)
    T = make_T(cv2.Rodrigues(np.array([0.0, 0.05, 0.0]))[0], np.array([0.05, 0.0, 0.02]))  # dst <- src
    depth, values = register(src, np.full(src.shape, 7, np.uint8), K_src, T, K, (80, 60))
    # The plane in the destination frame: n' = R n, d' = d + n'.t
    n_dst = T[:3, :3] @ n
    expected = _plane_depth(K, (80, 60), n_dst, 0.8 + n_dst @ T[:3, 3])
    inner = (slice(6, -6), slice(8, -8))
    assert (depth[inner] > 0).all() and (values[inner] == 7).all()
    # Mesh interpolation of a plane is exact; a point splat is off by the plane's slope over a pixel (~1e-3).
    assert np.abs(depth[inner] - expected[inner]).max() < 1e-5


def test_registration_keeps_occlusion_edges_sharp():
    K = np.array([[100.0, 0, 39.5], [0, 100.0, 29.5], [0, 0, 1]])
    src = np.full((60, 80), 1.0, np.float32)
    src[:, 40:] = 0.5  # a near box edge: no triangle may bridge the 0.5 m step
    T = make_T(np.eye(3), np.array([0.03, 0.0, 0.0]))  # the destination 3 cm to the source's left
    depth, _ = register(src, np.ones(src.shape, np.uint8), K, T, K, (80, 60))
    row = depth[30]
    assert set(np.round(row[row > 0], 4)) <= {0.5, 1.0}
    # The far half shifts 3 px, the near one 6 px: the pixels between them the source never saw stay
    # empty or far, never an interpolated depth.
    assert (row[3:43] == 1.0).all() and (row[46:] == 0.5).all() and (row[43:46] != 0.5).all()


@pytest.mark.slow
@pytest.mark.parametrize("method, bound", [("stereo", 0.1), ("sensor", 0.03)])
def test_depth_stage_on_a_small_episode(bowling_episode, default_config, tmp_path, method, bound):
    out = tmp_path / "depth.zarr"
    # 160 px pairs take the matcher settings of the 424 px mode (2x, 3 px floor); the 848 px rig's (1x and a
    # 6 px floor together) leave abs_rel 0.17 at this size.
    matcher = {**default_config["depth"]["matcher"], "upsample": 2, "min_disparity": 3, "num_disparities": 64}
    spec = json.dumps({"name": "bowling", "depth": {**default_config["depth"], "method": method, "matcher": matcher}})
    result = run_module("pipeline.depth", "--capture", str(bowling_episode[0]), "--spec", spec, "--out", str(out))
    assert result.returncode == 0, result.stderr
    depth, gt = open_artifact(out, "depth"), open_artifact(bowling_episode[1], "groundtruth")
    if method == "stereo":  # the matcher's range must reach the nearest object, or it takes the table's depth
        nearest_object_m = gt["depth_ir"][:][gt["ids_ir"][:] > 0].min()
        assert (depth["nearest_depth_m"][:] < nearest_object_m).all() and "disparity range reaches" in result.stderr
    figures = depth_figures(depth, gt)
    # At 160x120 a pin is a few pixels wide and disparities are about 13 px: far coarser than the default.
    assert figures["abs_rel"][0] < bound and figures["valid_frac"][0] > 0.8


def _capture_copy(src, dst, edit):
    """A copy of a capture artifact with some arrays changed by ``edit(dict of arrays)``."""
    cap = open_artifact(src, "capture")
    arrays = {k: cap[k][:] for k in cap.keys()}
    edit(arrays)
    with ArtifactWriter(dst, "capture", "capture", dict(cap.attrs["config"]),
                        **{k: v for k, v in cap.attrs.items() if k in ("scene", "episode", "split", "camera_names",
                                                                       "streams", "sequence", "source")}) as g:
        for k, v in arrays.items():
            put(g, k, v)


@pytest.mark.slow
def test_bad_depth_inputs(bowling_episode, default_config, tmp_path):
    params = _params(default_config)
    no_baseline = tmp_path / "no_baseline.zarr"
    _capture_copy(bowling_episode[0], no_baseline, lambda a: a["T_irright_depth"].__setitem__(
        slice(None), np.tile(np.eye(4), (4, 1, 1))))
    with pytest.raises(DepthError, match="camera cam0: the infrared pair has no baseline"):
        write_depth(str(no_baseline), "stereo", params, str(tmp_path / "d.zarr"))
    blank = tmp_path / "blank.zarr"
    _capture_copy(bowling_episode[0], blank, lambda a: a["depth"].__setitem__(slice(None), 0))
    with pytest.raises(DepthError, match="no camera has valid depth"):
        write_depth(str(blank), "sensor", params, str(tmp_path / "d.zarr"))
    no_frames = tmp_path / "no_frames.zarr"
    _capture_copy(bowling_episode[0], no_frames, lambda a: a.update(
        {k: a[k][:, :0] for k in ("color", "depth", "ir_left", "ir_right", "timestamps")}))
    with pytest.raises(DepthError, match=f"{no_frames}: 4 cameras and 0 frames"):
        write_depth(str(no_frames), "stereo", params, str(tmp_path / "d.zarr"))
    assert not (tmp_path / "d.zarr").exists()
    result = run_module("pipeline.depth", "--capture", str(blank), "--spec", json.dumps(
        {"name": "bowling", "depth": {"method": "sensor", "matcher": {"num_disparities": 40}}}),
        "--out", str(tmp_path / "d.zarr"))
    assert result.returncode != 0 and "num_disparities" in result.stderr
