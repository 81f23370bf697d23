"""Quality of the depth stage against exact depth, on object pixels of the colour cameras (against = gt).

    python -m pipeline.quality depth --depth results/bowling/depth/train_0000.zarr \\
        --groundtruth results/bowling/groundtruth/train_0000.zarr --out report.csv

    abs_rel        mean |d - d*| / d* over object pixels with depth
    mae_mm         mean |d - d*| over the same pixels
    valid_frac     share of object pixels with depth (measured or filled in)
    measured_frac  share of object pixels the matcher (or sensor) measured, not filled in
    bad_10mm_frac  share of the object pixels with depth whose depth is off by more than 10 mm

``bad1_frac`` of the matcher on a stereo pair with ground-truth disparity is ``tsukuba_bad1``.
"""
from __future__ import annotations

import numpy as np

from ..stereo import MatcherParams, match
from . import episode_main


def depth_figures(depth, gt) -> dict[str, tuple[float, str]]:
    C, T = depth["depth"].shape[:2]
    rel, err, n_obj, n_valid, n_measured = [], [], 0, 0, 0
    measured_level = depth["confidence"].attrs["measured"]
    for c in range(C):
        for t in range(T):
            obj = gt["ids_color"][c, t] > 0
            est, conf = depth["depth"][c, t][obj], depth["confidence"][c, t][obj]
            true = gt["depth_color"][c, t][obj]
            valid = est > 0
            n_obj += int(obj.sum())
            n_valid += int(valid.sum())
            n_measured += int((conf >= measured_level).sum())
            rel.append(np.abs(est[valid] - true[valid]) / true[valid])
            err.append(np.abs(est[valid] - true[valid]))
    rel, err = np.concatenate(rel), np.concatenate(err)
    nan = float("nan")  # no object pixel with depth: nothing to measure the error on
    return {"abs_rel": (float(rel.mean()) if n_valid else nan, "1"),
            "mae_mm": (float(err.mean()) * 1000 if n_valid else nan, "mm"),
            "valid_frac": (n_valid / max(n_obj, 1), "1"), "measured_frac": (n_measured / max(n_obj, 1), "1"),
            "bad_10mm_frac": (float((err > 0.01).sum()) / n_valid if n_valid else nan, "1")}


def bad1_fraction(left: np.ndarray, right: np.ndarray, gt_disparity: np.ndarray, params: MatcherParams) -> float:
    """Share of pixels with known disparity (gt > 0) where the matcher is off by more than 1 px
    (pixels it leaves without a disparity count as off)."""
    disparity, _ = match(left, right, params)
    known = gt_disparity > 0
    return float((np.abs(disparity - gt_disparity)[known] > 1).mean())


def main(argv=None) -> int:
    return episode_main(argv, "depth", __doc__, "method", depth_figures,
                        frames=lambda depth: depth["depth"].shape[1])
