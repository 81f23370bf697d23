"""Quality of the masks against the true instance ids of the colour cameras (against = gt).

    python -m pipeline.quality masks --masks results/bowling/masks/train_0000.zarr \\
        --groundtruth results/bowling/groundtruth/train_0000.zarr --out report.csv

Predicted ids are matched to true objects once per episode (Hungarian assignment on pixel overlap
summed over all views and frames), so an id that swaps objects between views or frames is penalised.
    miou            IoU of each true object's mask with its matched id's mask, averaged over objects,
                    views and frames in which the object is visible
    id_consistency  share of object pixels carrying a predicted id whose predicted id is the one
                    matched to their own object
    ids_per_object  predicted ids that cover at least 1% of an object's pixels, averaged over objects
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from . import episode_main


def overlap_table(pred_all, true_all) -> np.ndarray:
    """(P+1, G+1) pixel counts of predicted id p on true id g over all views and frames."""
    P = int(max(pred_all[c].max() for c in range(pred_all.shape[0])))
    G = int(max(true_all[c].max() for c in range(true_all.shape[0])))
    table = np.zeros((P + 1, G + 1), np.int64)
    for c in range(pred_all.shape[0]):
        pred, true = pred_all[c].astype(np.int64), true_all[c].astype(np.int64)
        np.add.at(table, (pred.ravel(), true.ravel()), 1)
    return table


def mask_figures(masks, gt) -> dict[str, tuple[float, str]]:
    pred_all, true_all = masks["ids"], gt["ids_color"]
    table = overlap_table(pred_all, true_all)
    rows, cols = linear_sum_assignment(-table[1:, 1:])
    match = {int(g) + 1: int(p) + 1 for p, g in zip(rows, cols)}  # true id -> predicted id
    C, T = pred_all.shape[:2]
    ious = []
    for c in range(C):
        pred, true = pred_all[c], true_all[c]
        for g in np.unique(true[true > 0]):
            p = match.get(int(g), -1)
            tm = true == g
            pm = pred == p
            for t in range(T):
                if tm[t].any():
                    ious.append((tm[t] & pm[t]).sum() / (tm[t] | pm[t]).sum())
    labelled = table[1:, 1:]
    consistent = sum(table[p, g] for g, p in match.items())
    share = labelled / np.maximum(labelled.sum(axis=0, keepdims=True), 1)
    return {"miou": (float(np.mean(ious)) if ious else 0.0, "1"),
            "id_consistency": (float(consistent / max(labelled.sum(), 1)), "1"),
            "ids_per_object": (float((share >= 0.01).sum(axis=0).mean()), "1")}


def main(argv=None) -> int:
    return episode_main(argv, "masks", __doc__, "backend", mask_figures,
                        frames=lambda masks: masks["ids"].shape[1])
