"""Quality of the voted object ids against the true objects (against = gt).

    python -m pipeline.quality ids --ids results/bowling/ids/train_0000.zarr \\
        --groundtruth results/bowling/groundtruth/train_0000.zarr --out report.csv

A Gaussian's true object is the one whose surface is nearest its first-frame position (see
``quality.tracking``; the tracking artifact is read through the ids artifact's source). Voted ids are
matched to true objects once (Hungarian assignment on Gaussian counts).
    id_accuracy         share of object Gaussians whose id is the one matched to their true object
    background_share    share of object Gaussians voted background (id 0)
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from . import episode_main
from ..artifact import open_artifact
from .tracking import true_objects


def matched_ids(pred: np.ndarray, owner: np.ndarray) -> dict[int, int]:
    """{predicted id: true object index} from Gaussian counts (ids >= 1 and owners >= 0 only)."""
    sel = (pred > 0) & (owner >= 0)
    if not sel.any():
        return {}
    table = np.zeros((pred.max() + 1, owner.max() + 1), np.int64)
    np.add.at(table, (pred[sel], owner[sel]), 1)
    rows, cols = linear_sum_assignment(-table)
    return {int(r): int(c) for r, c in zip(rows, cols) if table[r, c] > 0}


def id_figures(ids_art, gt) -> dict[str, tuple[float, str]]:
    track = open_artifact(ids_art.attrs["source_tracking"], "tracking")
    owner, _ = true_objects(track["means"][0].astype(np.float64), gt)
    pred = ids_art["ids"][:].astype(np.int64)
    match = matched_ids(pred, owner)
    obj = owner >= 0
    right = np.array([match.get(int(p), -2) == o for p, o in zip(pred[obj], owner[obj])])
    return {"id_accuracy": (float(right.mean()) if obj.any() else 0.0, "1"),
            "background_share": (float((pred[obj] == 0).mean()) if obj.any() else 0.0, "1")}


def main(argv=None) -> int:
    return episode_main(argv, "ids", __doc__, "method", id_figures)
