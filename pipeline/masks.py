"""Stage `masks`: per view, per frame instance masks whose ids agree across all views and frames.

    python -m pipeline.masks --depth results/bowling/depth/train_0000.zarr \\
        --calibration results/bowling/calibration.zarr --config config.yaml --scene bowling \\
        --out results/bowling/masks/train_0000.zarr

Offline backend (``fused``, the default; no downloaded weights): every camera's registered depth is
lifted into the calibrated world frame and what stands above the table inside the workspace is fused
into one point cloud per frame; points that other cameras see through (free space) are carved away. At the first frame the cloud is split into objects by 3D connectivity (voxels sharing a face,
edge or corner); at each later frame every point takes the id of the nearest point of the previous
frame's labelled cloud moved by each object's constant-velocity prediction (objects that touch later
keep their ids); components beyond reach join the nearest object within a wider radius or, further
still, start new objects. Each pixel then takes the id of its own 3D point, so occlusion is handled by the depth
itself and one object has one id in every view.

Ids are 1..N (0 = background or no depth). Objects touching at the first frame (a stack of cubes) stay
one id: 3D connectivity cannot separate them.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm import tqdm

from .artifact import ArtifactError, ArtifactWriter, frame_array, open_artifact, put
from .config import ConfigError, read_scene_spec
from .geometry import backproject, invert_T, transform_points


class MasksError(RuntimeError):
    """Masks cannot be made from these inputs; the message names the file or camera."""


def world_points(depth: np.ndarray, K: np.ndarray, T_cw: np.ndarray):
    """(N,3) world points of one view's pixels with depth and their (N,) flat pixel indices."""
    keep = depth > 0
    return transform_points(invert_T(T_cw), backproject(K, depth)[keep]), np.flatnonzero(keep)


def foreground(points: np.ndarray, cfg: dict) -> np.ndarray:
    """Mask of points inside the workspace box and above the table by more than the clearance."""
    (x0, y0), (x1, y1) = cfg["workspace_xy_m"]
    return ((points[:, 2] > cfg["table_clearance_m"]) & (points[:, 2] < cfg["max_height_m"])
            & (points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1))


def carve(points: np.ndarray, view: int, depths: np.ndarray, K: np.ndarray, T_cw: np.ndarray, margin: float,
          votes: int) -> np.ndarray:
    """Mask of points kept by free-space carving: a point is dropped when at least ``votes`` other cameras
    see something more than ``margin`` behind it along their ray to it (it floats in space they see
    through: stereo noise, a smeared depth edge). depths (C,H,W) metres, 0 = none."""
    seen_through = np.zeros(len(points), int)
    C, H, W = depths.shape
    for c in range(C):
        if c == view:
            continue
        p = transform_points(T_cw[c], points)
        z = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.rint(K[c, 0, 0] * p[:, 0] / z + K[c, 0, 2]).astype(int)
            v = np.rint(K[c, 1, 1] * p[:, 1] / z + K[c, 1, 2]).astype(int)
        inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        d = np.zeros(len(points))
        d[inside] = depths[c, v[inside], u[inside]]
        seen_through += (d > 0) & (d > z + margin)
    return seen_through < votes


def connected_objects(points: np.ndarray, voxel: float, min_points: int) -> np.ndarray:
    """(N,) labels 1..K of 26-connected voxel components holding at least ``min_points`` points (0 = noise)."""
    if len(points) == 0:
        return np.zeros(0, int)
    cells = np.floor(points / voxel).astype(int)
    lo = cells.min(axis=0)
    cells -= lo
    grid = np.zeros(cells.max(axis=0) + 1, dtype=bool)
    grid[tuple(cells.T)] = True
    components, _ = ndimage.label(grid, structure=np.ones((3, 3, 3)))
    labels = components[tuple(cells.T)]
    counts = np.bincount(labels)
    big = np.flatnonzero((counts >= min_points) & (np.arange(len(counts)) > 0))
    relabel = np.zeros(len(counts), int)
    # Ids in order of size, largest first: stable and readable.
    relabel[big[np.argsort(-counts[big], kind="stable")]] = np.arange(1, len(big) + 1)
    return relabel[labels]


def predict(points: np.ndarray, labels: np.ndarray, velocity: dict[int, np.ndarray]) -> np.ndarray:
    """Points moved by their object's velocity (metres per frame): a constant-velocity prediction."""
    moved = points.copy()
    for k, v in velocity.items():
        moved[labels == k] += v
    return moved


def centroids(points: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(k): points[labels == k].mean(axis=0) for k in np.unique(labels[labels > 0])}


def kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising |R src + t - dst| over matched (N,3) point pairs."""
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    U, _, Vt = np.linalg.svd((src - cs).T @ (dst - cd))
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ S @ U.T
    return R, cd - R @ cs


def align(points: np.ndarray, model: np.ndarray, model_labels: np.ndarray, radius: float, iterations: int):
    """Move each object's model points rigidly onto this frame's points (ICP from the prediction):
    nearest-neighbour correspondences within ``radius``, one Kabsch fit per object and iteration."""
    model = model.copy()
    for _ in range(iterations):
        dist, idx = cKDTree(model).query(points, distance_upper_bound=radius)
        near = np.isfinite(dist)
        for k in np.unique(model_labels):
            pair = near & (model_labels[np.minimum(idx, len(model) - 1)] == k)
            if pair.sum() < 10:
                continue
            R, t = kabsch(model[idx[pair]], points[pair])
            model[model_labels == k] = model[model_labels == k] @ R.T + t
    return model


def propagate(points: np.ndarray, model: np.ndarray, model_labels: np.ndarray, cfg: dict,
              next_id: int) -> tuple[np.ndarray, int]:
    """Labels of this frame's points from the previous frame's labelled points (``model``, already moved
    by their predicted motion): each object's model is aligned to the points (ICP), then every point takes
    the label of the nearest model point within ``track_radius_m``. The rest are grouped into components;
    one lying within ``reattach_radius_m`` of a model point joins that object (fast motion outran the
    prediction), one further away becomes a new object if it holds ``min_points`` points."""
    labels = np.zeros(len(points), int)
    if len(points) == 0:
        return labels, next_id
    tree = None
    if len(model):
        model = align(points, model, model_labels, cfg["reattach_radius_m"], cfg["icp_iterations"])
        tree = cKDTree(model)
        dist, idx = tree.query(points, distance_upper_bound=cfg["track_radius_m"])
        near = np.isfinite(dist)
        labels[near] = model_labels[idx[near]]
    far = np.flatnonzero(labels == 0)
    groups = connected_objects(points[far], cfg["voxel_m"], 1)
    for k in range(1, int(groups.max()) + 1 if len(groups) else 1):
        members = far[groups == k]
        if tree is not None:
            dist, idx = tree.query(points[members], distance_upper_bound=cfg["reattach_radius_m"])
            if np.isfinite(dist).any():
                labels[members] = model_labels[idx[np.argmin(dist)]]
                continue
        if len(members) >= cfg["min_points"]:
            labels[members] = next_id
            next_id += 1
    return labels, next_id


def label_view(points: np.ndarray, flat: np.ndarray, shape: tuple[int, int], labelled: cKDTree | None,
               labels: np.ndarray, cfg: dict) -> np.ndarray:
    """(H,W) ids of one view from its pixels' world ``points`` (measured or filled, at ``flat`` indices):
    a point above the table within ``label_radius_m`` of a labelled point takes that point's id. The
    pixel's own depth decides what it sees, so occluded objects do not paint over the ones in front."""
    image = np.zeros(shape[0] * shape[1], np.uint16)
    if labelled is not None:
        above = points[:, 2] > cfg["table_clearance_m"] / 2
        dist, idx = labelled.query(points[above], distance_upper_bound=cfg["label_radius_m"])
        near = np.isfinite(dist)
        image[flat[above][near]] = labels[idx[near]]
    return image.reshape(shape)


def write_masks(depth_path: str, calibration_path: str, cfg: dict, out: str) -> dict:
    depth_art = open_artifact(depth_path, "depth")
    cal = open_artifact(calibration_path, "calibration")
    names = list(depth_art.attrs["camera_names"])
    if list(cal.attrs["camera_names"]) != names:
        raise MasksError(f"{calibration_path} calibrates cameras {cal.attrs['camera_names']}, "
                         f"{depth_path} has {names}")
    C, T, H, W = depth_art["depth"].shape
    K, T_cw = depth_art["K"][:], cal["T_cw_color"][:]
    min_conf = depth_art["confidence"].attrs["measured"] if cfg["measured_only"] else 1
    prev_points, prev_labels, next_id = np.zeros((0, 3)), np.zeros(0, int), 1
    velocity: dict[int, np.ndarray] = {}
    prev_centroids: dict[int, np.ndarray] = {}
    counts = np.zeros(T, int)
    attrs = {k: depth_art.attrs[k] for k in ("scene", "episode", "split", "camera_names")}
    with ArtifactWriter(out, "masks", "masks", cfg, **attrs, backend="fused", source_depth=str(depth_path),
                        source_calibration=str(calibration_path)) as g:
        ids = frame_array(g, "ids", (C, T, H, W), "uint16")
        ids.attrs.update(background=0)
        for t in tqdm(range(T), desc="masks (fused)", unit="frame", file=sys.stderr):
            depths, confidence = depth_art["depth"][:, t], depth_art["confidence"][:, t]
            per_view = [world_points(depths[c], K[c], T_cw[c]) for c in range(C)]
            fused = [foreground(p, cfg) & (confidence[c].ravel()[flat] >= min_conf)
                     for c, (p, flat) in enumerate(per_view)]
            for c, ((p, _), m) in enumerate(zip(per_view, fused)):
                m[m] = carve(p[m], c, depths, K, T_cw, cfg["carve_margin_m"], cfg["carve_votes"])
            points = np.concatenate([p[m] for (p, _), m in zip(per_view, fused)])
            if t == 0:
                labels = connected_objects(points, cfg["voxel_m"], cfg["min_points"])
                next_id = int(labels.max()) + 1 if len(labels) else 1
            else:
                labels, next_id = propagate(points, predict(prev_points, prev_labels, velocity), prev_labels,
                                            cfg, next_id)
            kept = labels > 0
            labelled = cKDTree(points[kept]) if kept.any() else None
            for c, (p, flat) in enumerate(per_view):
                ids[c, t] = label_view(p, flat, (H, W), labelled, labels[kept], cfg)
            prev_points, prev_labels = points[kept], labels[kept]
            now = centroids(prev_points, prev_labels)
            velocity = {k: now[k] - prev_centroids[k] for k in now if k in prev_centroids}
            prev_centroids = now
            counts[t] = len(np.unique(labels[kept]))
        if next_id == 1:
            raise MasksError(f"{depth_path}: nothing stands above the table in any view at the first frame "
                             f"(clearance {cfg['table_clearance_m']} m); is the calibration right?")
        put(g, "objects_per_frame", counts)
        g.attrs["n_objects"] = next_id - 1
    return {"n_objects": next_id - 1, "objects_per_frame": counts}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.masks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", required=True, help="depth artifact of the episode")
    ap.add_argument("--calibration", required=True, help="calibration artifact of the rig")
    ap.add_argument("--config", help="config.yaml (with --scene): its masks section")
    ap.add_argument("--scene")
    ap.add_argument("--spec", help="the scene's validated config sections as JSON (what Snakemake passes)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        spec = read_scene_spec(args.config, args.scene, args.spec)
        if "masks" not in spec:
            raise ConfigError("the spec has no masks section")
        result = write_masks(args.depth, args.calibration, spec["masks"], args.out)
    except (ConfigError, ArtifactError, MasksError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{result['n_objects']} objects; per frame {result['objects_per_frame'].min()}.."
          f"{result['objects_per_frame'].max()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
