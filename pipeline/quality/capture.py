"""Quality of the synthetic capture: does the ground truth agree with itself and with the sensor images?

Figures per episode (``against`` = gt):
    mask_point_agreement   share of visible object surface points (facing the camera, nothing in
                           front; projected through the true colour cameras) that land inside their
                           own instance mask, read at sub-pixel precision
    gt_depth_surface_err_mm  largest distance of back-projected true depth (object pixels) from the
                           true object surface
    ir_disparity_err_px    median |matched disparity - f b / z| at projected dots, matching the infrared
                           pair by normalised cross-correlation around the predicted disparity
    ir_disparity_within_0p5px  share of those dots matched within 0.5 px
    sensor_abs_rel, sensor_mae_mm, sensor_valid_frac  the unit's own depth on object pixels
    charuco_corners_frac   (calibration sequence) share of board corners OpenCV detects per view
"""
from __future__ import annotations

import numpy as np

from ..charuco import Detector
from ..geometry import backproject, invert_T, project, transform_points
from ..shapes import Shape
from . import episode_main

VISIBLE_TOL_M = 0.002


def mask_point_agreement(gt) -> float:
    """Share of visible surface points that land inside their own instance mask.

    Visible: the surface faces the camera and nothing lies in front of the point at its nearest pixel.
    Inside: one of the four pixel centres around the projection carries the object's id, i.e. the mask
    is read at sub-pixel precision, so a point a fraction of a pixel from the silhouette is not failed
    for where the pixel grid happens to fall.
    """
    poses = gt["poses"][:]
    pts, nrm = gt["surface_points"][:], gt["surface_normals"][:]
    ids_all, depth_all = gt["ids_color"], gt["depth_color"]
    K, T_cw = gt["K_color"][:], gt["T_cw_color"][:]
    object_ids = gt["object_ids"][:]
    good = total = 0
    for c in range(K.shape[0]):
        centre = invert_T(T_cw[c])[:3, 3]
        for t in range(poses.shape[0]):
            ids, depth = ids_all[c, t], depth_all[c, t]
            h, w = ids.shape
            for k, oid in enumerate(object_ids):
                pw = transform_points(poses[t, k], pts[k])
                nw = nrm[k] @ poses[t, k][:3, :3].T
                facing = np.einsum("ij,ij->i", nw, centre - pw) > 0
                uv, z = project(K[c], T_cw[c], pw)
                inside = facing & (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
                uv, z = uv[inside], z[inside]
                u, v = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
                visible = z <= depth[v, u] + VISIBLE_TOL_M  # nothing in front of the point
                u0, v0 = np.floor(uv[visible, 0]).astype(int), np.floor(uv[visible, 1]).astype(int)
                u1, v1 = np.minimum(u0 + 1, w - 1), np.minimum(v0 + 1, h - 1)
                hit = (ids[v0, u0] == oid) | (ids[v0, u1] == oid) | (ids[v1, u0] == oid) | (ids[v1, u1] == oid)
                good += int(hit.sum())
                total += int(visible.sum())
    return good / max(total, 1)


def depth_surface_error_mm(gt) -> float:
    """Largest |signed distance| (mm) of back-projected true depth at object pixels to the true shape."""
    poses = gt["poses"][:]
    shapes = [Shape.from_artifact(parts) for parts in gt.attrs["shapes"]]
    K, T_cw = gt["K_color"][:], gt["T_cw_color"][:]
    object_ids = list(gt["object_ids"][:])
    worst = 0.0
    for c in range(K.shape[0]):
        T_wc = invert_T(T_cw[c])
        for t in range(poses.shape[0]):
            ids, depth = gt["ids_color"][c, t], gt["depth_color"][c, t]
            pw = transform_points(T_wc, backproject(K[c], np.where(np.isfinite(depth), depth, 0)).reshape(-1, 3))
            flat = ids.ravel()
            for k, oid in enumerate(object_ids):
                m = flat == oid
                if m.any():
                    p_obj = transform_points(invert_T(poses[t, k]), pw[m])
                    worst = max(worst, float(np.abs(shapes[k].sdf(p_obj)).max()) * 1000)
    return worst


def ir_disparity_errors(cap, gt, max_points: int = 400, half: int = 3, seed: int = 0) -> np.ndarray:
    """|matched - predicted| disparity (px) at bright dots seen by both infrared imagers."""
    rng = np.random.default_rng(seed)
    K = cap["K_depth"][:]
    baseline = -cap["T_irright_depth"][:][:, 0, 3]
    errs = []
    C, T = cap["ir_left"].shape[:2]
    for c in range(C):
        f = K[c, 0, 0]
        for t in range(T):
            left = cap["ir_left"][c, t].astype(np.float32)
            right = cap["ir_right"][c, t].astype(np.float32)
            z = gt["depth_ir"][c, t]
            h, w = left.shape
            dots = left > np.percentile(left, 97)
            dots &= np.isfinite(z)
            dots[:half + 1], dots[-half - 1:], dots[:, :half + 1], dots[:, -half - 1:] = False, False, False, False
            vs, us = np.nonzero(dots)
            if len(vs) == 0:
                continue
            pick = rng.choice(len(vs), min(max_points, len(vs)), replace=False)
            for v, u in zip(vs[pick], us[pick]):
                d_true = f * baseline[c] / z[v, u]
                cands = np.arange(np.floor(d_true) - 3, np.ceil(d_true) + 4).astype(int)
                cands = cands[(u - cands - half >= 0) & (u - cands + half < w)]
                if len(cands) < 3:
                    continue
                patch = left[v - half:v + half + 1, u - half:u + half + 1]
                patch = (patch - patch.mean()) / (patch.std() + 1e-6)
                scores = []
                for d in cands:
                    q = right[v - half:v + half + 1, u - d - half:u - d + half + 1]
                    scores.append(float(((q - q.mean()) / (q.std() + 1e-6) * patch).mean()))
                i = int(np.argmax(scores))
                if scores[i] < 0.6 or i == 0 or i == len(scores) - 1:
                    continue  # no confident, interior match (occluded or textureless)
                s0, s1, s2 = scores[i - 1], scores[i], scores[i + 1]
                sub = 0.5 * (s0 - s2) / (s0 - 2 * s1 + s2) if (s0 - 2 * s1 + s2) != 0 else 0.0
                errs.append(abs(cands[i] + sub - d_true))
    return np.asarray(errs)


def sensor_depth_figures(cap, gt) -> dict:
    """The unit's own depth against exact depth, on object pixels of the depth (infrared-left) frame."""
    scale = cap["depth_scale_m"][:]
    abs_rel, err, n_valid, n_total = [], [], 0, 0
    C, T = cap["depth"].shape[:2]
    for c in range(C):
        for t in range(T):
            obj = gt["ids_ir"][c, t] > 0
            true = gt["depth_ir"][c, t][obj]
            meas = cap["depth"][c, t][obj] * scale[c]
            valid = meas > 0
            n_total += obj.sum()
            n_valid += valid.sum()
            abs_rel.append(np.abs(meas[valid] - true[valid]) / true[valid])
            err.append(np.abs(meas[valid] - true[valid]))
    abs_rel, err = np.concatenate(abs_rel), np.concatenate(err)
    return {"sensor_abs_rel": (float(abs_rel.mean()), "1"), "sensor_mae_mm": (float(err.mean()) * 1000, "mm"),
            "sensor_valid_frac": (n_valid / max(n_total, 1), "1")}


def charuco_corner_fraction(cap, board: dict) -> float:
    """Mean share of the board's corners detected per view and frame."""
    detector = Detector(board)
    C, T = cap["color"].shape[:2]
    return float(np.mean([len(detector.detect(cap["color"][c, t])[0]) / detector.n_corners
                          for c in range(C) for t in range(T)]))


def capture_figures(cap, gt) -> dict[str, tuple[float, str]]:
    """{metric: (value, unit)} of one capture and its ground truth."""
    figures = {}
    if cap.attrs["sequence"] == "calibration":
        figures["charuco_corners_frac"] = (charuco_corner_fraction(cap, gt.attrs["board"]), "1")
    else:
        figures["mask_point_agreement"] = (mask_point_agreement(gt), "1")
        figures.update(sensor_depth_figures(cap, gt))
    figures["gt_depth_surface_err_mm"] = (depth_surface_error_mm(gt), "mm")
    errs = ir_disparity_errors(cap, gt)
    figures["ir_disparity_err_px"] = (float(np.median(errs)) if len(errs) else float("nan"), "px")
    figures["ir_disparity_within_0p5px"] = (float((errs < 0.5).mean()) if len(errs) else float("nan"), "1")
    return figures


def main(argv=None) -> int:
    return episode_main(argv, "capture", __doc__, "source", capture_figures,
                        frames=lambda capture: capture["color"].shape[1])
