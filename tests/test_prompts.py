"""Automatic prompts from 3D clusters: one per object in every view that sees it, inside its mask."""
import cv2
import numpy as np

from pipeline.external import read_ply_points
from pipeline.geometry import intrinsics_from_hfov, look_at_T_cw
from pipeline.masks import connected_objects
from pipeline.prompts import cluster_prompts

from .conftest import external


def _box_iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1) * max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return ix / (area(a) + area(b) - ix)


def test_prompts_one_object_hidden_behind_another():
    """Two spheres on a line with the first camera: it prompts only the front one; a side camera both."""
    rng = np.random.default_rng(0)
    sphere = rng.normal(size=(2000, 3))
    sphere = 0.03 * sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
    points = np.concatenate([sphere + [0.1, 0, 0.03], sphere + [-0.1, 0, 0.03]])
    labels = np.repeat([1, 2], 2000)
    K = np.stack([intrinsics_from_hfov(160, 120, np.radians(60))] * 2)
    T_cw = np.stack([look_at_T_cw([0.6, 0, 0.03], [0, 0, 0.03]), look_at_T_cw([0, 0.6, 0.3], [0, 0, 0])])
    prompts = cluster_prompts(points, labels, K, T_cw, (120, 160))
    assert set(prompts[0]) == {1} and set(prompts[1]) == {1, 2}
    x0, y0, x1, y1 = prompts[1][1]["box"]
    u, v = prompts[1][1]["point"]
    assert x0 < u < x1 and y0 < v < y1


def test_prompts_land_on_the_object_in_every_real_view():
    """gs-dynamics demo: its fused object cloud clusters into one object, whose prompt in each of the four
    real RealSense views lies inside the real mask, with a box matching the mask's."""
    data = external("gs-dynamics-demo")
    points = read_ply_points(data / "pcd.ply")
    labels = connected_objects(points, 0.01, 50)
    assert labels.max() == 1
    K = np.load(data / "intr_list.npy")
    T_wc = np.tile(np.eye(4), (4, 1, 1))
    T_wc[:, :3, :3], T_wc[:, :3, 3] = np.load(data / "R_list.npy"), np.load(data / "t_list.npy")
    prompts = cluster_prompts(points, labels, K, np.linalg.inv(T_wc), (480, 640))
    for c, view in enumerate(prompts):
        mask = cv2.imread(str(data / f"mask_{c}.png"), cv2.IMREAD_GRAYSCALE) > 0
        ys, xs = np.nonzero(mask)
        assert set(view) == {1}, c
        u, v = view[1]["point"]
        assert mask[v, u], c
        assert _box_iou(view[1]["box"], [xs.min(), ys.min(), xs.max(), ys.max()]) > 0.9, c
