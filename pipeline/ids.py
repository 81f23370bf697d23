"""Stage `ids`: one object id per Gaussian, voted from the masks through the renderer.

    python -m pipeline.ids --tracking results/bowling/tracking/train_0000.zarr \\
        --masks results/bowling/masks/train_0000.zarr --config config.yaml --scene bowling \\
        --out results/bowling/ids/train_0000.zarr

As in "Learning a Particle Dynamics Model with Real-world Videos": Gaussian i's contribution to pixel u
of view c is its compositing weight γ = α_i(u) Π_{j in front of i} (1 − α_j(u)). For each mask (object
id) the Gaussian's score is its largest γ inside that mask; each view votes for the mask of highest
score; the majority over views decides, ties broken by the summed score. Voting is repeated at every
``frame_stride``-th tracked frame and the votes pooled, so a Gaussian hidden at one frame is decided by
others. A Gaussian whose best score stays below ``min_contribution`` (default 0.001: next to no
contribution) in every view is background (id 0).
Soft ids are the summed scores per object, normalised to sum to one; a background Gaussian's are all 0
(its scores, under ``min_contribution``, would otherwise name an object its hard id does not).

Artifact: ``ids`` (N,) int32 (0 = background), ``soft_ids`` (N, M) float32 over mask ids 1..M,
``votes`` (N, M) int32.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm import tqdm

from .artifact import ArtifactWriter, open_artifact, put, same_cameras
from .config import stage_main
from .splat import contributions


class IdsError(RuntimeError):
    """Ids cannot be voted from these inputs; the message names the file."""


def vote(scores: np.ndarray, min_contribution: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores (V,N,M): each voter's (a view at a frame) largest γ of Gaussian n in mask m (masks 1..M).
    Returns (N,) ids in 0..M (0 = no vote), (N,M) votes and (N,M) soft ids."""
    V, N, M = scores.shape
    best = scores.max(axis=2)
    choice = scores.argmax(axis=2)                                   # (V,N)
    votes = np.zeros((N, M), np.int32)
    for v in range(V):
        cast = best[v] >= min_contribution
        np.add.at(votes, (np.flatnonzero(cast), choice[v][cast]), 1)
    total = scores.sum(axis=0)                                       # (N,M)
    # Majority of votes; among tied masks the larger summed score wins.
    key = votes + total / (total.max(axis=1, keepdims=True) + 1e-12) * 0.5
    ids = np.where(votes.max(axis=1) > 0, key.argmax(axis=1) + 1, 0).astype(np.int32)
    soft = np.where((ids > 0)[:, None], total / np.maximum(total.sum(axis=1, keepdims=True), 1e-12), 0.0)
    return ids, votes, soft.astype(np.float32)


def voter_scores(track, masks, frames: list[int], n_ids: int) -> np.ndarray:
    """(V,N,M) scores for every view at each of ``frames``."""
    K, T_cw = torch.from_numpy(track["K"][:]).float(), torch.from_numpy(track["T_cw"][:]).float()
    scales = torch.from_numpy(track["scales"][:]).float()
    opacities = torch.from_numpy(track["opacities"][:]).float()
    out = []
    for t in tqdm(frames, desc="ids", unit="frame", file=sys.stderr):
        labels = torch.from_numpy(masks["ids"][:, t].astype(np.int64)).clamp(max=n_ids)
        gamma = contributions(torch.from_numpy(track["means"][t]).float(), torch.from_numpy(track["quats"][t]).float(),
                              scales, opacities, K, T_cw, labels, n_ids + 1)     # (C,N,M+1)
        out.append(gamma[:, :, 1:].numpy())
    return np.concatenate(out)


def write_ids(tracking_path: str, masks_path: str, cfg: dict, out: str) -> dict:
    track = open_artifact(tracking_path, "tracking")
    masks = open_artifact(masks_path, "masks")
    if (track.attrs["scene"], track.attrs["episode"]) != (masks.attrs["scene"], masks.attrs["episode"]):
        raise IdsError(f"{tracking_path} and {masks_path} are of different episodes")
    same_cameras(IdsError, (tracking_path, track), (masks_path, masks))
    T = track["means"].shape[0]
    if masks["ids"].shape[1] != T:
        raise IdsError(f"{masks_path} has {masks['ids'].shape[1]} frames, {tracking_path} has {T}")
    if masks["ids"].shape[2:] != track["background"].shape[1:3]:
        raise IdsError(f"{masks_path} has {masks['ids'].shape[2:]} pixels a view, the cameras of {tracking_path} "
                       f"{track['background'].shape[1:3]}")
    n_ids = int(masks.attrs["n_objects"])
    frames = list(range(0, T, cfg["frame_stride"]))
    scores = voter_scores(track, masks, frames, n_ids)
    ids, votes, soft = vote(scores, cfg["min_contribution"])
    attrs = {k: track.attrs[k] for k in ("scene", "episode", "split", "camera_names")}
    with ArtifactWriter(out, "ids", "ids", cfg, **attrs, method="gamma-vote", source_tracking=str(tracking_path),
                        source_masks=str(masks_path), voting_frames=frames) as g:
        put(g, "ids", ids, {"note": "object id per Gaussian, 0 = background"})
        put(g, "soft_ids", soft, {"shape": "(N, M)", "columns": "mask ids 1..M"})
        put(g, "votes", votes, {"shape": "(N, M)"})
        g.attrs["n_objects"] = n_ids
    return {"objects": int(len(np.unique(ids[ids > 0]))), "background": int((ids == 0).sum()), "n": len(ids)}


def main(argv=None) -> int:
    def run(args, cfg):
        result = write_ids(args.tracking, args.masks, cfg, args.out)
        return f"{result['n']} Gaussians: {result['objects']} objects, {result['background']} background"

    return stage_main(argv, "ids", __doc__, {"tracking": "tracking artifact of the episode",
                                             "masks": "masks artifact of the episode"}, (IdsError,), run)


if __name__ == "__main__":
    sys.exit(main())
