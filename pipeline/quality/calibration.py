"""Quality of the calibration: camera extrinsics against ground truth or a reference calibration.

    python -m pipeline.quality calibration --calibration results/bowling/calibration.zarr \\
        --groundtruth results/bowling/groundtruth/calibration.zarr --out results/bowling/quality/calibration.csv
    python -m pipeline.quality calibration --calibration cal.zarr --reference camera_array.toml --out q.csv

Against ground truth (``against`` = gt), per camera (``episode`` = ``calibration/<camera>``):
    rot_err_deg    angle between estimated and true world-to-camera rotations
    trans_err_mm   distance between estimated and true camera centres
    reproj_rms_px  RMS reprojection error of the camera's board corners after adjustment
and over the rig (``episode`` = ``calibration``): the largest of the first two, the RMS of the third.

Against a reference calibration (``against`` = reference), whose world frame differs from ours, the
relative poses of every camera pair are compared (``episode`` = ``calibration/<a>-<b>``), with the
medians over pairs as the rig's figures. A reference is a caliscope ``camera_array.toml``
(per camera ``rotation`` R and ``translation`` t with x_cam = R x_world + t, metres).
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from itertools import combinations

import numpy as np

from ..artifact import ArtifactError, open_artifact
from ..geometry import invert_T, make_T, rotation_angle_deg
from . import write_report


def pose_errors(T_cw_est: np.ndarray, T_cw_ref: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, camera-centre error in mm) of one world-to-camera transform."""
    rot = rotation_angle_deg(T_cw_est[:3, :3], T_cw_ref[:3, :3])
    trans = float(np.linalg.norm(invert_T(T_cw_est)[:3, 3] - invert_T(T_cw_ref)[:3, 3])) * 1000
    return rot, trans


def relative_pose_errors(T_cw_est: np.ndarray, T_cw_ref: np.ndarray) -> dict[tuple[int, int], tuple[float, float]]:
    """Per camera pair (a, b): errors of the pose of b in a's frame (T_ba = T_cw_b T_cw_a^-1)."""
    out = {}
    for a, b in combinations(range(len(T_cw_est)), 2):
        est = T_cw_est[b] @ invert_T(T_cw_est[a])
        ref = T_cw_ref[b] @ invert_T(T_cw_ref[a])
        rot = rotation_angle_deg(est[:3, :3], ref[:3, :3])
        out[(a, b)] = (rot, float(np.linalg.norm(est[:3, 3] - ref[:3, 3])) * 1000)
    return out


def read_caliscope(path: str, names: list[str]) -> np.ndarray:
    """(C,4,4) world-to-camera transforms of a caliscope camera_array.toml, in the order of ``names``."""
    with open(path, "rb") as f:
        cams = {str(c["cam_id"]): c for c in tomllib.load(f)["cameras"].values()}
    missing = [n for n in names if n not in cams]
    if missing:
        raise ArtifactError(f"{path}: no reference for camera(s) {missing} (has {sorted(cams)})")
    return np.stack([make_T(np.asarray(cams[n]["rotation"]), np.asarray(cams[n]["translation"])) for n in names])


def rows_against_gt(cal, gt) -> list[dict]:
    names = list(cal.attrs["camera_names"])
    T_est, T_gt = cal["T_cw_color"][:], gt["T_cw_color"][:]
    if len(T_est) != len(T_gt):
        raise ArtifactError(f"the calibration has {len(T_est)} cameras {names}, the ground truth {len(T_gt)}")
    rms = cal["reproj_rms_px"][:]
    counts = cal["n_corners"][:]
    rows, rots, transs = [], [], []
    for c, name in enumerate(names):
        rot, trans = pose_errors(T_est[c], T_gt[c])
        rots.append(rot)
        transs.append(trans)
        rows += [(f"calibration/{name}", "rot_err_deg", rot, "deg"), (f"calibration/{name}", "trans_err_mm", trans, "mm"),
                 (f"calibration/{name}", "reproj_rms_px", float(rms[c]), "px")]
    rig_rms = float(np.sqrt(np.sum(rms**2 * counts) / max(counts.sum(), 1)))
    rows += [("calibration", "rot_err_deg", max(rots), "deg"), ("calibration", "trans_err_mm", max(transs), "mm"),
             ("calibration", "reproj_rms_px", rig_rms, "px")]
    return [_row(cal, "gt", *r) for r in rows]


def rows_against_reference(cal, reference: str) -> list[dict]:
    names = list(cal.attrs["camera_names"])
    errors = relative_pose_errors(cal["T_cw_color"][:], read_caliscope(reference, names))
    rows = []
    for (a, b), (rot, trans) in errors.items():
        rows += [(f"calibration/{names[a]}-{names[b]}", "rot_err_deg", rot, "deg"),
                 (f"calibration/{names[a]}-{names[b]}", "trans_err_mm", trans, "mm")]
    rows += [("calibration", "rot_err_deg", float(np.median([e[0] for e in errors.values()])), "deg"),
             ("calibration", "trans_err_mm", float(np.median([e[1] for e in errors.values()])), "mm"),
             ("calibration", "reproj_rms_px", float(cal.attrs["reproj_rms_px"]), "px")]
    return [_row(cal, "reference", *r) for r in rows]


def _row(cal, against: str, episode: str, metric: str, value: float, unit: str) -> dict:
    method = f"charuco_ba_{cal.attrs['intrinsics_source']}_intrinsics"
    return {"scene": cal.attrs["scene"], "split": "calibration", "episode": episode, "stage": "calibration",
            "method": method, "metric": metric, "value": f"{value:.6g}", "unit": unit, "against": against}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.quality calibration", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--groundtruth", help="ground truth of the calibration sequence")
    src.add_argument("--reference", help="a reference calibration (caliscope camera_array.toml)")
    ap.add_argument("--out", required=True, help="CSV report")
    args = ap.parse_args(argv)
    try:
        cal = open_artifact(args.calibration, "calibration")
        if args.groundtruth:
            rows = rows_against_gt(cal, open_artifact(args.groundtruth, "groundtruth"))
        else:
            rows = rows_against_reference(cal, args.reference)
    except (OSError, ArtifactError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(rows, args.out)
    return 0
