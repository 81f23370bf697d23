"""Readers of the small real data sets others made (../shared/data/external), for tests and benchmarks."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from .geometry import icp, make_T, transform_gaussians
from .splat import read_splat_file


def read_ply_points(path) -> np.ndarray:
    """(N,3) float64 vertices of a binary little-endian PLY whose vertices start with x, y, z."""
    raw = Path(path).read_bytes()
    header, body = raw.split(b"end_header\n", 1)
    props = [line.split()[1:] for line in header.decode().splitlines() if line.startswith("property")]
    dtype = np.dtype([(name, {"double": "<f8", "float": "<f4", "uchar": "u1"}[kind]) for kind, name in props])
    v = np.frombuffer(body, dtype=dtype)
    return np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)


def move_gaussians(g: dict, T: np.ndarray) -> dict:
    """A copy of Gaussians ``g`` (as from ``read_splat_file``) with means and rotations moved by rigid (4,4) ``T``."""
    means, quats = transform_gaussians(g["means"], g["quats"], T)
    return {**g, "means": means.astype(np.float32), "quats": quats.astype(np.float32)}


def gs_dynamics_demo(path) -> dict:
    """The gs-dynamics demo capture: four views (K (4,3,3), T_cw (4,4,4), images (4,480,640,3) RGB uint8,
    masks (4,480,640) bool) and its trained Gaussians posed in the cameras' world frame.

    The splat file is stored centred and rotated -90 degrees about x; it is rotated back, moved to the
    centroid of the fused object cloud ``pcd.ply`` and registered onto it by ICP (the residual rotation
    is a few degrees; centres then lie a few millimetres from the cloud)."""
    path = Path(path)
    K = np.load(path / "intr_list.npy")
    T_wc = np.tile(np.eye(4), (len(K), 1, 1))
    T_wc[:, :3, :3], T_wc[:, :3, 3] = np.load(path / "R_list.npy"), np.load(path / "t_list.npy")
    images = np.stack([cv2.imread(str(path / f"img_{c}.png"))[..., ::-1] for c in range(len(K))])
    masks = np.stack([cv2.imread(str(path / f"mask_{c}.png"), cv2.IMREAD_GRAYSCALE) > 0 for c in range(len(K))])
    g = read_splat_file(path / "gs_orig.splat")
    undo = Rotation.from_euler("x", 90, degrees=True)
    means = undo.apply(g["means"].astype(np.float64))
    cloud = read_ply_points(path / "pcd.ply")
    means += cloud.mean(0) - means.mean(0)
    tree = cKDTree(cloud)
    T = icp(means, tree, np.eye(4), np.geomspace(0.05, 0.005, 30))
    g = move_gaussians({**g, "means": means, "quats": (undo * Rotation.from_quat(g["quats"])).as_quat()}, T)
    return {"K": K, "T_cw": np.linalg.inv(T_wc), "images": images, "masks": masks, "gaussians": g,
            "cloud": cloud, "offset_m": float(np.median(tree.query(g["means"])[0]))}


def register_to_masks(g: dict, K: np.ndarray, T_cw: np.ndarray, masks: np.ndarray, scale: float = 0.25,
                      steps: int = 150) -> np.ndarray:
    """(4,4) rigid correction of Gaussians ``g`` (as from ``read_splat_file``) that best overlays their
    rendered alpha on the (C,H,W) ``masks``: Adam on an axis-angle and a translation, images rendered at
    ``scale`` of their size (silhouette registration, for data whose pose is known only roughly)."""
    import torch

    from .splat import quat_to_rotmat, render
    from .tracking import quat_mul

    C, H, W = masks.shape
    h, w = int(H * scale), int(W * scale)
    Ks = torch.from_numpy(K).float().clone()
    Ks[:, :2] *= scale
    Ks[:, :2, 2] += 0.5 * scale - 0.5  # pixel centres stay at integer coordinates
    target = torch.from_numpy(np.stack([cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
                                        for m in masks]))
    means = torch.from_numpy(g["means"]).float()
    centre = means.mean(0)
    tensors = {k: torch.from_numpy(np.asarray(g[k])).float() for k in ("quats", "scales", "opacities")}
    rotvec = torch.zeros(3, requires_grad=True)
    shift = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([{"params": [rotvec], "lr": 2e-3}, {"params": [shift], "lr": 5e-4}])
    T_cw_t = torch.from_numpy(T_cw).float()

    def rotation():
        angle = rotvec.norm().clamp_min(1e-12)
        q = torch.cat([rotvec / angle * torch.sin(angle / 2), torch.cos(angle / 2)[None]])
        return q, quat_to_rotmat(q[None])[0]

    for _ in range(steps):
        q, R = rotation()
        moved = (means - centre) @ R.T + centre + shift
        quats = quat_mul(q.expand_as(tensors["quats"]), tensors["quats"])
        out = render(moved, quats, tensors["scales"], tensors["opacities"], torch.ones(len(means), 1), Ks, T_cw_t,
                     w, h, backend="torch")
        loss = (out.alpha - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, R = rotation()
    R, shift, c = R.numpy().astype(np.float64), shift.detach().numpy().astype(np.float64), centre.numpy()
    return make_T(R, c + shift - R @ c)
