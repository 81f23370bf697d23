"""Quality of the tracked Gaussians against the true object motion (against = gt).

    python -m pipeline.quality tracking --tracking results/bowling/tracking/train_0000.zarr \\
        --groundtruth results/bowling/groundtruth/train_0000.zarr --out report.csv

Each Gaussian belongs to the true object whose surface is nearest its first-frame position (within
``SURFACE_MM``; Gaussians further from every object are not object Gaussians). Its true trajectory is its
first-frame position carried by that object's true motion, x*(t) = P(t) P(0)^-1 x(0). Errors are taken
over the tracked frames t >= 1 (at t = 0 the true trajectory starts at the Gaussian: zero by construction).
    mte_mm        median over object Gaussians of the mean error along the trajectory
    delta_avg     share of (Gaussian, frame) errors within 5, 10, 20 and 40 mm, averaged over the four
    survival      share of object Gaussians whose error stays under 100 mm in every frame
    object_share  share of all Gaussians that are object Gaussians
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from . import episode_main

SURFACE_MM = 10.0


def true_objects(means0: np.ndarray, gt) -> tuple[np.ndarray, np.ndarray]:
    """(N,) index into the ground truth's objects of each Gaussian's nearest true surface (-1: none within
    SURFACE_MM) and (N,) its distance in metres, from (N,3) first-frame positions."""
    surface = gt["surface_points"][:]                      # (K,S,3) object frame
    poses0 = gt["poses"][0]                                # (K,4,4)
    world = np.einsum("kij,ksj->ksi", poses0[:, :3, :3], surface) + poses0[:, None, :3, 3]
    owner = np.repeat(np.arange(len(world)), world.shape[1])
    dist, j = cKDTree(world.reshape(-1, 3)).query(means0)
    return np.where(dist * 1000 <= SURFACE_MM, owner[j], -1), dist


def true_motions(gt) -> np.ndarray:
    """(T,K,4,4) true motion of every object from frame 0 to frame t, P(t) P(0)^-1, world frame."""
    poses = gt["poses"][:]
    return poses @ np.linalg.inv(poses[0])[None]


def true_trajectories(means0: np.ndarray, owner: np.ndarray, gt) -> np.ndarray:
    """(T,N,3) first-frame positions carried by their object's true motion (NaN for non-object ones)."""
    M = true_motions(gt)[:, np.maximum(owner, 0)]          # (T,N,4,4)
    out = np.einsum("tnij,nj->tni", M[..., :3, :3], means0) + M[..., :3, 3]
    out[:, owner < 0] = np.nan
    return out


def tracking_figures(track, gt) -> dict[str, tuple[float, str]]:
    means = track["means"][:].astype(np.float64)
    owner, _ = true_objects(means[0], gt)
    obj = owner >= 0
    err = np.linalg.norm(means[1:, obj] - true_trajectories(means[0], owner, gt)[1:, obj], axis=-1) * 1000
    if not obj.any() or not len(err):
        return {"mte_mm": (float("nan"), "mm"), "delta_avg": (0.0, "1"), "survival": (0.0, "1"),
                "object_share": (0.0, "1")}
    return {"mte_mm": (float(np.median(err.mean(axis=0))), "mm"),
            "delta_avg": (float(np.mean([(err < d).mean() for d in (5, 10, 20, 40)])), "1"),
            "survival": (float((err.max(axis=0) < 100).mean()), "1"),
            "object_share": (float(obj.mean()), "1")}


def main(argv=None) -> int:
    return episode_main(argv, "tracking", __doc__, "method", tracking_figures,
                        frames=lambda track: track["means"].shape[0])
