"""Stage `labels`: object poses fitted to the tracked Gaussians, exported as training pseudo-labels.

    python -m pipeline.labels --tracking results/bowling/tracking/train_0000.zarr \\
        --ids results/bowling/ids/train_0000.zarr --capture results/bowling/capture/train_0000.zarr \\
        --masks results/bowling/masks/train_0000.zarr --config config.yaml --scene bowling \\
        --out results/bowling/labels/train_0000.zarr

For every object (voted id) and frame, a rigid motion from the first frame is fitted to the object's
tracked Gaussians (Kabsch, then refitted ``iterations`` times on the inliers: Gaussians whose residual is
below ``outlier_sigma`` robust standard deviations (1.4826 MAD) or ``min_inlier_m``, whichever is larger).
As the paper's released code does, the pseudo-label state of a Gaussian is its first-frame position and
rotation carried by its object's motion; background Gaussians (id 0) stay where they were.

One training-ready artifact per episode: the first-frame Gaussian attributes (means, quats, scales,
opacities, colours), hard and soft ids, per-frame pseudo-label positions (T,N,3) and rotations (T,N,4,
x y z w), object motions (T,M,4,4; frame 0 -> frame t, identity where an object has too few Gaussians),
fit residuals, the cameras, and the paths of the capture (images) and masks the rendering loss needs.
"""
from __future__ import annotations

import sys

import numpy as np

from .artifact import ArtifactWriter, open_artifact, put, same_cameras
from .config import stage_main
from .geometry import kabsch, make_T, transform_gaussians


class LabelsError(RuntimeError):
    """Labels cannot be made from these inputs; the message names the file."""


def robust_motion(src: np.ndarray, dst: np.ndarray, cfg: dict) -> tuple[np.ndarray, float, float]:
    """(4,4) rigid motion taking (P,3) ``src`` onto ``dst`` with outlier rejection; returns it, the inliers'
    RMS residual (m) and the inlier share."""
    inl = np.ones(len(src), bool)
    for _ in range(cfg["iterations"] + 1):
        R, t = kabsch(src[inl], dst[inl])
        res = np.linalg.norm(src @ R.T + t - dst, axis=1)
        mad = np.median(np.abs(res - np.median(res)))
        new = res <= max(cfg["outlier_sigma"] * 1.4826 * mad + np.median(res), cfg["min_inlier_m"])
        if new.sum() < 3 or (new == inl).all():
            break
        inl = new
    return make_T(R, t), float(np.sqrt(np.mean(res[inl] ** 2))), float(inl.mean())


def fit_motions(means: np.ndarray, ids: np.ndarray, n_objects: int, cfg: dict):
    """(T,M,4,4) motions, (T,M) RMS residuals and inlier shares of objects 1..M from (T,N,3) tracks."""
    T = len(means)
    motions = np.tile(np.eye(4), (T, n_objects, 1, 1))
    rms, share = np.zeros((T, n_objects)), np.zeros((T, n_objects))
    for k in range(1, n_objects + 1):
        members = np.flatnonzero(ids == k)
        if len(members) < cfg["min_gaussians"]:
            continue
        for t in range(T):
            motions[t, k - 1], rms[t, k - 1], share[t, k - 1] = robust_motion(means[0, members], means[t, members], cfg)
    return motions, rms, share


def pseudo_labels(means0, quats0, ids, motions):
    """(T,N,3) positions and (T,N,4) rotations: first-frame Gaussians carried by their object's motion. A
    rotation keeps one quaternion sign along its trajectory (q and -q are one rotation; scipy picks either
    anew each frame, and 5 % of a bowling episode's frame pairs flipped), so consecutive ones can be compared."""
    T = len(motions)
    pos = np.repeat(means0[None], T, 0).astype(np.float64)
    rot = np.repeat(quats0[None], T, 0).astype(np.float64)
    for k in range(1, motions.shape[1] + 1):
        sel = ids == k
        if not sel.any():
            continue
        for t in range(T):
            pos[t, sel], rot[t, sel] = transform_gaussians(means0[sel], quats0[sel], motions[t, k - 1])
    for t in range(1, T):
        rot[t][np.einsum("ni,ni->n", rot[t], rot[t - 1]) < 0] *= -1
    return pos.astype(np.float32), rot.astype(np.float32)


def write_labels(tracking_path: str, ids_path: str, capture_path: str, masks_path: str, cfg: dict, out: str) -> dict:
    track = open_artifact(tracking_path, "tracking")
    ids_art = open_artifact(ids_path, "ids")
    inputs = ((capture_path, open_artifact(capture_path, "capture")), (masks_path, open_artifact(masks_path, "masks")),
              (ids_path, ids_art))
    for path, art in inputs:
        if (art.attrs["scene"], art.attrs["episode"]) != (track.attrs["scene"], track.attrs["episode"]):
            raise LabelsError(f"{path} is not of the episode of {tracking_path}")
    same_cameras(LabelsError, (tracking_path, track), *inputs)
    means = track["means"][:].astype(np.float64)
    ids = ids_art["ids"][:]
    if len(ids) != means.shape[1]:
        raise LabelsError(f"{ids_path} has ids for {len(ids)} Gaussians, {tracking_path} tracks {means.shape[1]}")
    n_objects = int(ids_art.attrs["n_objects"])
    motions, rms, share = fit_motions(means, ids, n_objects, cfg)
    quats0 = track["quats"][0]
    pos, rot = pseudo_labels(means[0], quats0, ids, motions)
    attrs = {k: track.attrs[k] for k in ("scene", "episode", "split", "camera_names")}
    with ArtifactWriter(out, "labels", "labels", cfg, **attrs, method="robust-kabsch", source_tracking=str(tracking_path),
                        source_ids=str(ids_path), images=str(capture_path), masks=str(masks_path)) as g:
        put(g, "means0", means[0].astype(np.float32), {"unit": "m"})
        put(g, "quats0", quats0, {"convention": "(x, y, z, w)"})
        for name in ("scales", "opacities", "colours"):
            put(g, name, track[name][:])
        put(g, "ids", ids, {"note": "0 = background"})
        put(g, "soft_ids", ids_art["soft_ids"][:])
        put(g, "positions", pos, {"shape": "(T, N, 3)", "unit": "m"})
        put(g, "rotations", rot, {"shape": "(T, N, 4)", "convention": "(x, y, z, w)"})
        put(g, "motions", motions, {"shape": "(T, M, 4, 4)", "maps": "object at frame 0 -> frame t, world frame"})
        put(g, "residual_rms", rms, {"unit": "m"})
        put(g, "inlier_share", share)
        put(g, "tracked_means", means.astype(np.float32), {"note": "the tracker's own positions, for comparison"})
        put(g, "K", track["K"][:])
        put(g, "T_cw", track["T_cw"][:])
        g.attrs["n_objects"] = n_objects
    fitted = rms[:, np.any(rms > 0, axis=0)]
    return {"objects": n_objects, "median_rms_mm": float(np.median(fitted) * 1000) if fitted.size else float("nan")}


def main(argv=None) -> int:
    def run(args, cfg):
        result = write_labels(args.tracking, args.ids, args.capture, args.masks, cfg, args.out)
        return f"{result['objects']} objects; median fit residual {result['median_rms_mm']:.2f} mm"

    return stage_main(argv, "labels", __doc__,
                      {"tracking": "tracking artifact of the episode", "ids": "ids artifact of the episode",
                       "capture": "the episode's images (referenced, not copied)",
                       "masks": "the episode's masks (referenced, not copied)"},
                      (LabelsError,), run)


if __name__ == "__main__":
    sys.exit(main())
