"""The ``sam2`` backend of the masks stage: SAM2's video predictor propagates prompts through each view.

Chosen with ``masks: {backend: sam2}`` in config.yaml; the model config, checkpoint and device live in
``masks.sam2``. Prompts come from ``masks.sam2.prompts`` (a box and/or points per camera and object)
or, when that is empty, from the first frame: the fused foreground depth of all views is clustered in
3D (as the offline backend does) and each cluster is projected into every view as a box and a point
(pipeline/prompts.py), so one object carries one id in all views. Each view is one SAM2 video; per
pixel and frame the object with the largest positive mask logit wins (0 = background).

With weights (on a GPU; see README "Masks with SAM2"):
    masks:
      backend: sam2
      sam2: {model_config: configs/sam2.1/sam2.1_hiera_l.yaml, checkpoint: checkpoints/sam2.1_hiera_large.pt}
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .masks import MasksError
from .prompts import cluster_prompts


def build_predictor(cfg: dict):
    """SAM2 video predictor from ``masks.sam2`` (model_config, checkpoint, hydra_overrides, device)."""
    checkpoint = Path(cfg["checkpoint"])
    if not checkpoint.is_file():
        raise MasksError(f"config key 'masks/sam2/checkpoint': {checkpoint} does not exist; download the weights "
                        f"that match masks/sam2/model_config ({cfg['model_config']}) from the SAM2 release, or "
                        f"use masks/backend: fused, which needs none")
    try:
        import torch
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as e:
        raise MasksError(f"masks/backend sam2 needs the sam2 package and torch ({e}); `make setup` installs them")
    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise MasksError("config key 'masks/sam2/device': cuda, but torch sees no CUDA device")
    try:
        predictor = build_sam2_video_predictor(cfg["model_config"], ckpt_path=str(checkpoint), device=device,
                                               hydra_overrides_extra=list(cfg["hydra_overrides"]))
    except Exception as e:  # hydra and torch.load raise many types; all mean the same to the user
        raise MasksError(f"{checkpoint} does not load as masks/sam2/model_config {cfg['model_config']} "
                        f"with overrides {cfg['hydra_overrides']}: {type(e).__name__}: {e}") from e
    if importlib.util.find_spec("sam2._C") is None:
        predictor.fill_hole_area = 0  # hole filling needs sam2's compiled CUDA extension
    return predictor


def prompts_for(frames, camera_names: list[str], cfg: dict, shape: tuple[int, int]) -> list[dict[int, dict]]:
    """Per camera {object id: {"frame", "box" or None, "points", "labels"}}: from the config when it lists
    prompts, else one box and one point per 3D cluster of the first frame's fused depth (``frames`` is
    the masks stage's FusedFrames; ``shape`` (H, W) its images')."""
    prompts: list[dict[int, dict]] = [{} for _ in camera_names]
    if cfg["prompts"]:
        (H, W), T = shape, frames.depth.shape[1]
        for i, p in enumerate(cfg["prompts"]):
            key = f"config key 'masks/sam2/prompts/{i}"
            if p["camera"] not in camera_names:
                raise MasksError(f"{key}/camera': {p['camera']!r} is not one of the episode's cameras {camera_names}")
            if p["frame"] >= T:
                raise MasksError(f"{key}/frame': {p['frame']}, the episode has frames 0..{T - 1}")
            points = p.get("points", [])
            if "point_labels" in p and len(p["point_labels"]) != len(points):
                raise MasksError(f"{key}/point_labels': {len(p['point_labels'])} labels for {len(points)} points")
            corners = [("box", p["box"][:2]), ("box", p["box"][2:])] if "box" in p else []
            for name, xy in corners + [(f"points/{j}", q) for j, q in enumerate(points)]:
                if not (0 <= xy[0] <= W - 1 and 0 <= xy[1] <= H - 1):
                    raise MasksError(f"{key}/{name}': ({xy[0]}, {xy[1]}) lies outside the {W}x{H} images")
            prompts[camera_names.index(p["camera"])][p["object"]] = {
                "frame": p["frame"], "box": p.get("box"), "points": points,
                "labels": p.get("point_labels", [1] * len(points))}
        return prompts
    depths, _, points, _, _, labels = frames.first_objects()
    for view, auto in zip(prompts, cluster_prompts(points, labels, frames.K, frames.T_cw, shape, depths,
                                                   cfg["min_prompt_pixels"])):
        for k, p in auto.items():
            view[k] = {"frame": 0, "box": p["box"], "points": [p["point"]], "labels": [1]}
    return prompts


def ids_from_logits(object_ids, logits) -> np.ndarray:
    """(H,W) uint16 ids from SAM2's (n,1,H,W) mask logits of objects ``object_ids``: per pixel the object
    with the largest logit if it is positive, else 0."""
    scores = logits[:, 0].float().cpu().numpy()
    best = scores.argmax(axis=0)
    return np.where(scores.max(axis=0) > 0, np.asarray(object_ids, np.uint16)[best], 0).astype(np.uint16)


def propagate(predictor, frames_bgr, add_prompts) -> np.ndarray:
    """(T,H,W) ids of one video: its (T,H,W,3) BGR frames, prompted by ``add_prompts(state)``, propagated
    by SAM2 from the earliest prompted frame on."""
    import torch

    T, H, W = frames_bgr.shape[:3]
    ids = np.zeros((T, H, W), np.uint16)
    with tempfile.TemporaryDirectory(prefix="sam2-frames-") as folder, torch.inference_mode():
        for t in range(T):  # SAM2 reads a video as a folder of JPEGs named by frame number
            cv2.imwrite(f"{folder}/{t:05d}.jpg", frames_bgr[t], [cv2.IMWRITE_JPEG_QUALITY, 95])
        state = predictor.init_state(video_path=folder, offload_video_to_cpu=True)
        add_prompts(state)
        for t, object_ids, logits in predictor.propagate_in_video(state):
            ids[t] = ids_from_logits(object_ids, logits)
    return ids


def segment_views(predictor, colour, prompts: list[dict[int, dict]], ids) -> tuple[np.ndarray, int]:
    """Propagate each view's prompts through its (T,H,W,3) RGB ``colour`` frames into ``ids`` (C,T,H,W);
    returns objects seen per frame and the largest prompted id (the artifact's ``n_objects``: ids run
    1..n_objects, and one that no prompt names stays empty)."""
    C, T = ids.shape[:2]
    largest_id = max((k for view in prompts for k in view), default=0)
    seen = np.zeros((T, largest_id + 1), bool)  # frame, id: is the id in some view
    for c in tqdm(range(C), desc="masks (sam2)", unit="view", file=sys.stderr):
        if not prompts[c]:
            ids[c] = np.zeros(ids.shape[1:], np.uint16)
            continue

        def add_prompts(state, view=prompts[c]):
            for k, p in view.items():
                predictor.add_new_points_or_box(
                    state, frame_idx=p["frame"], obj_id=k, box=p["box"],
                    points=np.asarray(p["points"], np.float32) if p["points"] else None,
                    labels=np.asarray(p["labels"], np.int32) if p["points"] else None)

        view_ids = propagate(predictor, colour[c][..., ::-1], add_prompts)
        ids[c] = view_ids
        for t in range(T):
            seen[t, np.unique(view_ids[t])] = True
    return seen[:, 1:].sum(axis=1), largest_id
