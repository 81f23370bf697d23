"""Propagate a first frame's object masks through one video (a folder of frames), and score it.

    python -m pipeline.video_masks --frames DAVIS/JPEGImages --first-mask DAVIS/Annotations/00000.png \\
        --annotations DAVIS/Annotations --out results/davis/blackswan --report results/davis/quality.csv

Backends:
  offline  dense optical flow (OpenCV DIS) carries each object's mask from frame to frame; GrabCut then
           snaps it to the image, with colour models learned once on the first frame's mask and frozen,
           so the masks cannot drift into colours the object did not have.
  sam2     SAM2's video predictor with the first frame's masks as mask prompts (``--config``: its
           masks.sam2 section names model config and checkpoint).

``--first-mask`` is a PNG: 0 background, any other value an object id (a 0/255 mask is one object).
With ``--annotations`` (PNGs named like the frames), J (mean IoU over the frames after the first,
averaged over objects) is printed and, with ``--report``, written in the quality report's long format.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from .config import ConfigError, load_config
from .masks import MasksError
from .quality import write_report

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_frames(folder: Path) -> tuple[list[Path], np.ndarray]:
    """The folder's frame files in name order and their (T,H,W,3) BGR pixels."""
    if not folder.is_dir():
        raise MasksError(f"{folder}: not a folder (expected one of frames, {', '.join(FRAME_SUFFIXES)})")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise MasksError(f"{folder}: no frames ({', '.join(FRAME_SUFFIXES)}) in this folder")
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files]
    for p, f in zip(files, frames):
        if f is None:
            raise MasksError(f"{p}: not a readable image")
        if f.shape != frames[0].shape:
            raise MasksError(f"{p}: {f.shape[1]}x{f.shape[0]} pixels, the first frame has "
                             f"{frames[0].shape[1]}x{frames[0].shape[0]}")
    return files, np.stack(frames)


def read_ids(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """(H,W) uint16 object ids of a mask PNG: a palette image's indices (DAVIS), a grey image's values (a 0/255
    mask becomes ids 0/1), or a colour image's colours, one id each (black 0)."""
    try:
        with Image.open(path) as image:  # a palette image's array holds its indices
            ids = np.array(image)
    except (OSError, ValueError):  # PIL's UnidentifiedImageError is an OSError
        raise MasksError(f"{path}: not a readable mask image") from None
    if ids.ndim == 3:
        colours, index = np.unique(ids[..., :3].reshape(-1, 3), axis=0, return_inverse=True)
        index = index.reshape(ids.shape[:2])
        if (colours == colours[:, :1]).all():  # grey stored as colour
            ids = colours[index, 0]
        else:  # black, sorted first where present, is the background
            ids = index + int(colours[0].any())
    if ids.shape != shape:
        raise MasksError(f"{path}: mask is {ids.shape[1]}x{ids.shape[0]}, the frames are {shape[1]}x{shape[0]}")
    if set(np.unique(ids)) <= {0, 255}:
        ids = (ids > 0).astype(np.uint16)
    return ids.astype(np.uint16)


def propagate_offline(frames: np.ndarray, first: np.ndarray, band_px: int = 8, core_px: int = 4,
                      iterations: int = 2) -> np.ndarray:
    """(T,H,W) ids carried from ``first`` (H,W ids) through (T,H,W,3) BGR ``frames``.

    Each frame: the previous masks are warped along the backward DIS flow; pixels deeper than ``core_px``
    inside a warped mask are sure object, the mask itself probably object, a ``band_px`` ring around it
    probably background, the rest background; GrabCut with the object's first-frame colour models
    decides the uncertain pixels. Where objects overlap, the lower id wins."""
    T, H, W = frames.shape[:3]
    ids = np.zeros((T, H, W), np.uint16)
    ids[0] = first
    objects = [int(k) for k in np.unique(first) if k > 0]
    flow_method = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    models = {}
    for k in objects:
        bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
        trimap = np.where(first == k, cv2.GC_FGD, cv2.GC_BGD).astype(np.uint8)
        cv2.grabCut(frames[0], trimap, None, bgd, fgd, 1, cv2.GC_INIT_WITH_MASK)
        models[k] = (bgd, fgd)
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float32)
    kernel = np.ones((3, 3), np.uint8)
    grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    for t in tqdm(range(1, T), desc="propagate (offline)", unit="frame", file=sys.stderr):
        flow = flow_method.calc(grey[t], grey[t - 1], None)  # where each pixel of frame t was in t-1
        for k in reversed(objects):
            warped = cv2.remap((ids[t - 1] == k).astype(np.float32), gx + flow[..., 0], gy + flow[..., 1],
                               cv2.INTER_LINEAR) > 0.5
            if not warped.any():
                continue
            mask8 = warped.astype(np.uint8)
            trimap = np.full((H, W), cv2.GC_BGD, np.uint8)
            trimap[cv2.dilate(mask8, kernel, iterations=band_px) > 0] = cv2.GC_PR_BGD
            trimap[warped] = cv2.GC_PR_FGD
            trimap[cv2.erode(mask8, kernel, iterations=core_px) > 0] = cv2.GC_FGD
            bgd, fgd = models[k]
            cv2.grabCut(frames[t], trimap, None, bgd.copy(), fgd.copy(), iterations, cv2.GC_EVAL_FREEZE_MODEL)
            ids[t][(trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)] = k
    return ids


def propagate_sam2(predictor, frames: np.ndarray, first: np.ndarray) -> np.ndarray:
    """(T,H,W) ids from SAM2's video predictor through (T,H,W,3) BGR ``frames``, given the first frame's
    ids as mask prompts."""
    from .sam2_masks import propagate

    def add_prompts(state):
        for k in np.unique(first[first > 0]):
            predictor.add_new_mask(state, frame_idx=0, obj_id=int(k), mask=first == k)

    return propagate(predictor, frames, add_prompts)


def write_pngs(ids: np.ndarray, stems: list[str], out: Path) -> None:
    """One 16-bit PNG of ids per frame into ``out``, written beside it first and renamed when complete."""
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True)
    for stem, frame_ids in zip(stems, ids):
        cv2.imwrite(str(tmp / f"{stem}.png"), frame_ids)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def mean_j(pred: np.ndarray, truth: np.ndarray) -> float:
    """J: IoU of each object's predicted and true masks, averaged over frames after the first (where the
    object is present in either) and over objects."""
    per_object = []
    for k in np.unique(truth[0][truth[0] > 0]):
        ious = []
        for p, g in zip(pred[1:], truth[1:]):
            union = ((p == k) | (g == k)).sum()
            if union:
                ious.append(((p == k) & (g == k)).sum() / union)
        per_object.append(np.mean(ious) if ious else 1.0)
    return float(np.mean(per_object))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.video_masks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", required=True, type=Path, help="folder of frames (jpg/png), in name order")
    ap.add_argument("--first-mask", required=True, type=Path, help="ids of the first frame (PNG)")
    ap.add_argument("--backend", choices=["offline", "sam2"], default="offline")
    ap.add_argument("--config", help="config.yaml whose masks.sam2 section the sam2 backend uses")
    ap.add_argument("--annotations", type=Path, help="true masks named like the frames: print J")
    ap.add_argument("--report", type=Path, help="with --annotations: write J as a quality report (CSV)")
    ap.add_argument("--out", required=True, type=Path, help="folder for the masks (PNG ids, one per frame)")
    args = ap.parse_args(argv)
    try:
        files, frames = read_frames(args.frames)
        first = read_ids(args.first_mask, frames.shape[1:3])
        if not first.any():
            raise MasksError(f"{args.first_mask}: the first frame's mask is empty: nothing to propagate")
        if args.backend == "sam2":
            if not args.config:
                raise ConfigError("--backend sam2 needs --config (its masks.sam2 section)")
            from .sam2_masks import build_predictor

            ids = propagate_sam2(build_predictor(load_config(args.config)["masks"]["sam2"]), frames, first)
        else:
            ids = propagate_offline(frames, first)
        write_pngs(ids, [f.stem for f in files], args.out)
        if args.annotations:
            truth = np.stack([read_ids(args.annotations / f"{f.stem}.png", first.shape) for f in files])
            j = mean_j(ids, truth)
            print(f"J = {j:.4f} over {len(files) - 1} frames", file=sys.stderr)
            if args.report:
                video = args.frames.resolve().parent.name
                write_report([{"scene": video, "split": "real", "episode": video, "stage": "masks",
                               "method": args.backend, "metric": "J", "value": f"{j:.6g}", "unit": "1",
                               "against": "gt"}], args.report)
    except (ConfigError, MasksError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
