"""Quality of the pseudo-label object motions against the true ones (against = gt).

    python -m pipeline.quality labels --labels results/bowling/labels/train_0000.zarr \\
        --groundtruth results/bowling/groundtruth/train_0000.zarr --out report.csv

Each labelled object is matched to a true object (Hungarian assignment on its Gaussians' true objects,
see ``quality.ids``). For frames t >= 1 its fitted motion M(t) (frame 0 -> t) is compared with the true
motion G(t) = P(t) P(0)^-1:
    pose_trans_err_mm   |M(t) c - G(t) c| at the centroid c of the object's first-frame Gaussians
    pose_rot_err_deg    angle of M_R(t) G_R(t)^T
both the median over objects and frames; ``*_p90`` the 90th percentile.
    pose_rot_err_sym_deg  pose_rot_err_deg up to the shape's rotational symmetry: for a solid of revolution
                          the angle between the fitted and true axis (spin about it is not counted); spheres
                          have no orientation and are left out. Texture can make the spin visible, so this
                          says how much of the rotation error is spin, not that spin is unobservable.
    label_mte_mm        as tracking's mte_mm (frames t >= 1), for the pseudo-label positions
"""
from __future__ import annotations

import numpy as np

from . import episode_main
from ..geometry import rotation_angle_deg
from ..shapes import Shape
from .ids import matched_ids
from .tracking import true_motions, true_objects, true_trajectories


def label_figures(labels, gt) -> dict[str, tuple[float, str]]:
    means0 = labels["means0"][:].astype(np.float64)
    ids = labels["ids"][:].astype(np.int64)
    owner, _ = true_objects(means0, gt)
    match = matched_ids(ids, owner)
    motions = labels["motions"][:]
    true_motion = true_motions(gt)
    symmetry = [Shape.from_artifact(parts).rotational_symmetry() for parts in gt.attrs["shapes"]]
    trans, rot, rot_sym = [], [], []
    for k, o in match.items():
        c = means0[ids == k].mean(0)
        kind, axis = symmetry[o]
        if kind == "axial":
            axis = gt["poses"][0, o, :3, :3] @ axis  # world frame at frame 0
        for t in range(1, len(motions)):
            M, G = motions[t, k - 1], true_motion[t, o]
            trans.append(np.linalg.norm(M[:3, :3] @ c + M[:3, 3] - G[:3, :3] @ c - G[:3, 3]) * 1000)
            rot.append(rotation_angle_deg(G[:3, :3], M[:3, :3]))
            if kind == "axial":
                cos = np.clip((M[:3, :3] @ axis) @ (G[:3, :3] @ axis), -1.0, 1.0)
                rot_sym.append(float(np.degrees(np.arccos(cos))))
            elif kind == "none":
                rot_sym.append(rot[-1])
    pos = labels["positions"][:].astype(np.float64)
    obj = owner >= 0
    err = np.linalg.norm(pos[1:, obj] - true_trajectories(means0, owner, gt)[1:, obj], axis=-1) * 1000
    nan = float("nan")
    return {"pose_trans_err_mm": (float(np.median(trans)) if trans else nan, "mm"),
            "pose_rot_err_deg": (float(np.median(rot)) if rot else nan, "deg"),
            "pose_trans_err_mm_p90": (float(np.percentile(trans, 90)) if trans else nan, "mm"),
            "pose_rot_err_deg_p90": (float(np.percentile(rot, 90)) if rot else nan, "deg"),
            "pose_rot_err_sym_deg": (float(np.median(rot_sym)) if rot_sym else nan, "deg"),
            "label_mte_mm": (float(np.median(err.mean(axis=0))) if err.size else nan, "mm")}


def main(argv=None) -> int:
    return episode_main(argv, "labels", __doc__, "method", label_figures,
                        frames=lambda labels: labels["motions"].shape[0])
