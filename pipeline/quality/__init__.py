"""Quality reports: each stage's artifact measured against ground truth (or pseudo-labels, or a reference).

Every report is a long-format CSV, one row per figure, with the columns ``COLUMNS``;
evaluation gathers them into metrics.csv.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Callable

COLUMNS = ["scene", "split", "episode", "stage", "method", "metric", "value", "unit", "against"]


def write_report(rows: list[dict], path: str | Path) -> None:
    """Write rows atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in COLUMNS})
    os.replace(tmp, path)


def episode_main(argv, stage: str, doc: str, method_attr: str,
                 figures: Callable[[object, object], dict[str, tuple[float, str]]],
                 frames: Callable[[object], int] | None = None) -> int:
    """``python -m pipeline.quality <stage> --<stage> A.zarr ... --groundtruth G.zarr ... --out R.csv``:
    one stage artifact and its episode's ground truth at a time, ``figures(artifact, gt)`` giving
    {metric: (value, unit)}; the artifact attribute ``method_attr`` names the method. An artifact must be of
    its ground truth's episode, with as many cameras (``camera_names``) and, where ``frames(artifact)``
    counts them, as many frames."""
    from ..artifact import ArtifactError, open_artifact

    ap = argparse.ArgumentParser(prog=f"python -m pipeline.quality {stage}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(f"--{stage}", nargs="+", required=True, dest="artifacts")
    ap.add_argument("--groundtruth", nargs="+", required=True)
    ap.add_argument("--out", required=True, help="CSV report")
    args = ap.parse_args(argv)
    if len(args.artifacts) != len(args.groundtruth):
        print(f"error: give one --groundtruth per --{stage}, in the same order", file=sys.stderr)
        return 2
    rows = []
    try:
        for path, gt_path in zip(args.artifacts, args.groundtruth):
            art, gt = open_artifact(path, stage), open_artifact(gt_path, "groundtruth")
            if (art.attrs["scene"], art.attrs["episode"]) != (gt.attrs["scene"], gt.attrs["episode"]):
                raise ArtifactError(f"{path} and {gt_path} are of different episodes")
            n_cameras, n_frames = gt["T_cw_color"].shape[0], gt["poses"].shape[0]
            if "camera_names" in art.attrs and len(art.attrs["camera_names"]) != n_cameras:
                raise ArtifactError(f"{path} has {len(art.attrs['camera_names'])} cameras, {gt_path} {n_cameras}")
            n_art = frames(art) if frames is not None else n_frames
            if n_art != n_frames:
                raise ArtifactError(f"{path} has {n_art} frames, {gt_path} {n_frames}")
            base = {"scene": art.attrs["scene"], "split": art.attrs["split"], "episode": art.attrs["episode"],
                    "stage": stage, "method": art.attrs[method_attr], "against": "gt"}
            rows += [{**base, "metric": m, "value": f"{v:.6g}", "unit": u} for m, (v, u) in figures(art, gt).items()]
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(rows, args.out)
    return 0
