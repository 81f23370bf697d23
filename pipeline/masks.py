"""Stage `masks`: per view, per frame instance masks whose ids agree across all views and frames.

    python -m pipeline.masks --capture results/bowling/capture/train_0000.zarr \\
        --depth results/bowling/depth/train_0000.zarr --calibration results/bowling/calibration.zarr \\
        --config config.yaml --scene bowling --out results/bowling/masks/train_0000.zarr

Offline backend (``fused``, the default; no downloaded weights): every camera's registered depth is lifted
into the calibrated world frame and what stands above the table inside the workspace is fused into one point
cloud per frame; points that other cameras see through (free space) are carved away. At the first frame the
cloud is split into objects by 3D connectivity (voxels sharing a face, edge or corner) and colour, and a part
that two cameras do not both see is dropped (a stereo mismatch); each object keeps these points as a rigid
model (``RigidObjects``) whose pose is tracked through the later frames by ICP against the fused cloud from a
constant-velocity prediction (point-to-point steps, then point-to-plane ones that let a partial model slide
along the surface). Each pixel takes the id of the object that best explains its own 3D point and its colour
(``assign``), so occlusion is decided by the view's depth and one object has one id in every view. The masks
are then cut to the image-space foreground (``TableParallax``: pixels whose colour disagrees with the table
point behind them as the other views see it, with a per-frame colour model of object against table where that
cannot decide, is fooled, or says table where the pixel's own depth stands above it), which follows
silhouettes at the colour image's resolution. Last, a pixel near another object's pixels takes that object's
id where its colour model explains the pixel's colour better (``colour_relabel``): where one object stands in
front of another, the depth smears the near one's id over the far one's edge. Objects of one colour (pins) are
told apart there by their posed models instead (``reassign_by_models``): a pixel where a model shows in front
of the others takes its id, if its colour fits. For this the models are cut to the first frame's silhouettes
in all views (``RigidObjects.cut_to_silhouettes``), since the depth fattens them too, completed where they lie
on a surface of revolution (``complete_by_revolution``: a pin's side that the first frame hid shows later),
and drawn as small discs that a pixel's centre must see (``front_surfel_ids``), not as points that claim every
pixel they fall in; where no model shows, each object's share of the first frame's visual hull decides
(``first_frame_hull``, ``RigidObjects.add_hull``): a far object's part that one view alone sees and its depth
misses. Finally the boundaries between objects are snapped to the image (``guided_relabel``): each object
pixel takes the object whose indicator image, smoothed by a guided filter with the colour image as its guide,
is largest there.

Ids are 1..N (0 = background or no depth). Objects touching at the first frame (a stack of cubes) are
one 3D component; it is cut by planes across which its colours do not overlap (``split_by_colour``), so
touching objects of different colours separate while one object's own pattern keeps it whole. Touching
objects of the same colour stay one id.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
from scipy import ndimage
from scipy.optimize import least_squares
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from .artifact import ArtifactWriter, frame_array, open_artifact, put, same_cameras
from .config import stage_main
from .geometry import (backproject, icp, invert_T, kabsch, make_T, perpendicular_basis, pixel_rays, point_normals,
                       point_to_plane, project, transform_points)


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


def pixels_in_view(points: np.ndarray, K: np.ndarray, T_cw: np.ndarray, shape: tuple[int, int]):
    """The nearest pixel of each of (N,3) world points in one camera: (M,) rows and (M,) columns of the
    (N,) ``inside`` points (in front of the camera and within the (H,W) image), and the (N,) depths."""
    H, W = shape
    uv, z = project(K, T_cw, points)
    with np.errstate(invalid="ignore"):
        u, v = np.rint(uv[:, 0]), np.rint(uv[:, 1])
        inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    return v[inside].astype(int), u[inside].astype(int), inside, z


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


def in_silhouettes(points: np.ndarray, silhouettes: np.ndarray, K: np.ndarray, T_cw: np.ndarray) -> np.ndarray:
    """Mask of the (N,3) world points that fall inside the (C,H,W) silhouettes of every view whose image they
    fall in (K (C,3,3), T_cw (C,4,4)): those outside lie outside the visual hull."""
    keep = np.ones(len(points), bool)
    for c in range(len(K)):
        left = np.flatnonzero(keep)  # each view projects only what the views before it kept
        rows, cols, inside, _ = pixels_in_view(points[left], K[c], T_cw[c], silhouettes[c].shape)
        keep[left[inside]] = silhouettes[c][rows, cols]
    return keep


def visual_hull(centres: np.ndarray, silhouettes: np.ndarray, depths: np.ndarray, K: np.ndarray, T_cw: np.ndarray,
                margin: float) -> np.ndarray:
    """Those of the (N,3) world voxel centres that fall inside the (C,H,W) silhouettes of every view whose
    image they fall in (K (C,3,3), T_cw (C,4,4)) and that no view sees through (``carve`` with the (C,H,W)
    depths, metres, 0 = none): the objects' visual hull less the free space between them that the depth
    shows and the silhouettes cannot."""
    centres = centres[in_silhouettes(centres, silhouettes, K, T_cw)]
    return centres[carve(centres, -1, depths, K, T_cw, margin, 1)]


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


CHROMA_BINS = 12  # per axis of the (r, g) chromaticity grid


def chromaticity_bins(colour: np.ndarray) -> np.ndarray:
    """(N,) bin index in a CHROMA_BINS x CHROMA_BINS grid of (r, g) / (r + g + b) of (N,3) colours: hue
    and saturation without the brightness, so one object's shaded and lit faces fall in the same bins."""
    c = colour.astype(np.float64)
    rg = c[:, :2] / (c.sum(axis=1, keepdims=True) + 1e-6)
    q = np.minimum((rg * CHROMA_BINS).astype(int), CHROMA_BINS - 1)
    return q[:, 0] * CHROMA_BINS + q[:, 1]


def colour_cut(points: np.ndarray, bins: np.ndarray, min_points: int):
    """The plane cutting (N,3) points with (N,) chromaticity bins into two sides whose colours differ
    most: (overlap, normal, offset), or (1, None, None) when no side can hold ``min_points``. Overlap is
    the share of the smaller side's points whose bin the other side also fills as often (0: disjoint
    colours, 1: the smaller side's colours all occur across the cut). Normals: vertical, horizontal and
    45 degrees up, every 15 degrees of azimuth (objects stand on the table, so stacks and rows meet in
    such planes)."""
    best = (1.0, None, None)
    k = np.arange(min_points, len(points) - min_points + 1)
    if len(k) == 0:
        return best
    normals = [np.array([0.0, 0.0, 1.0])]
    for a in np.arange(12) * np.pi / 12:
        normals += [np.array([np.cos(a), np.sin(a), 0.0]), np.array([np.cos(a), np.sin(a), 1.0]) / np.sqrt(2)]
    n_bins = CHROMA_BINS**2
    onehot = np.eye(n_bins, dtype=np.int32)
    for n in normals:
        s = points @ n
        order = np.argsort(s)
        below = np.cumsum(onehot[bins[order]], axis=0)[k - 1]  # (K, n_bins) colour counts below each cut
        above = np.bincount(bins, minlength=n_bins) - below
        overlap = np.minimum(below, above).sum(axis=1) / np.minimum(k, len(points) - k)
        i = int(np.argmin(overlap))
        if overlap[i] < best[0]:
            best = (float(overlap[i]), n, 0.5 * (s[order[k[i] - 1]] + s[order[k[i]]]))
    return best


def split_by_colour(points: np.ndarray, bins: np.ndarray, labels: np.ndarray, min_points: int,
                    max_overlap: float) -> np.ndarray:
    """(N,) labels with each connected object cut, recursively, by planes across which its colours do
    not overlap (``colour_cut`` below ``max_overlap``): touching objects of different colours (a stack of
    cubes) become separate objects, while one object's pattern (a pin's stripes, a ball's checks) recurs
    on both sides of every plane and keeps it whole. (N,) bins: the points' chromaticity bins. Ids in
    order of size, largest first."""
    parts: list[np.ndarray] = []
    todo = [np.flatnonzero(labels == k) for k in range(1, int(labels.max(initial=0)) + 1)]
    while todo:
        members = todo.pop()
        overlap, normal, offset = colour_cut(points[members], bins[members], min_points)
        if normal is None or overlap > max_overlap:
            parts.append(members)
            continue
        side = points[members] @ normal > offset
        todo += [members[~side], members[side]]
    out = np.zeros(len(points), int)
    for i, members in enumerate(sorted(parts, key=len, reverse=True)):
        out[members] = i + 1
    return out


def colour_log_likelihood(bins: np.ndarray) -> np.ndarray:
    """(CHROMA_BINS**2,) log p(chromaticity bin | object) from its points' (M,) bins: counts spread over
    the neighbouring bins (noise moves a colour across a bin edge), one count more in every bin so that an
    unseen colour is unlikely but not impossible."""
    counts = np.bincount(bins, minlength=CHROMA_BINS**2).reshape(CHROMA_BINS, CHROMA_BINS).astype(np.float64)
    counts = ndimage.uniform_filter(counts, 3, mode="constant") * 9 + 1
    return np.log(counts / counts.sum()).ravel()


def seen_by_cameras(cameras: np.ndarray, cfg: dict) -> bool:
    """Whether the (M,) cameras that saw a cluster's points make it an object: two of them at least each
    see ``camera_share`` of its points. A thing in the workspace is seen by more than one camera; a cloud
    that one camera alone sees is its matcher's mistake (bowling train_0000: background beyond the table,
    without texture, matched at half a metre for a frame)."""
    return bool((np.bincount(cameras) >= cfg["camera_share"] * len(cameras)).sum() >= 2)


def revolution_axis(points: np.ndarray, normals: np.ndarray, bin_m: float) -> tuple[np.ndarray, np.ndarray]:
    """The axis (a (3,) point on it, (3,) unit direction) of the surface of revolution that (N,3) points
    with (N,3) unit normals lie on best. Start: every normal line of such a surface meets the axis, so the
    normal lines (n, p x n) satisfy m.a + n.abar = 0 for the axis' Pluecker coordinates (a, abar) (a linear
    line complex of pitch 0; Pottmann and Randrup), a least-squares eigenproblem that a partial view of the
    surface still determines. Then refined so that the points' distance from the axis is a function of
    their height along it: the residuals to the profile of means in ``bin_m`` slices, robust (soft L1)."""
    moments = np.cross(points, normals)
    M = np.hstack([moments, normals])
    M = M.T @ M
    Maa, Mab, Mbb = M[:3, :3], M[:3, 3:], M[3:, 3:]
    Mbb_inv = np.linalg.pinv(Mbb)  # singular where all normals are parallel (a flat patch)
    a = np.linalg.eigh(Maa - Mab @ Mbb_inv @ Mab.T)[1][:, 0]  # abar eliminated, |a| = 1
    c = np.cross(a, -Mbb_inv @ Mab.T @ a)  # the axis' point nearest the origin
    u, v = perpendicular_basis(a)

    def axis(x):
        direction = a + x[0] * u + x[1] * v
        return c + x[2] * u + x[3] * v, direction / np.linalg.norm(direction)

    def residuals(x):
        h, r = revolution_coordinates(points, *axis(x))
        slices = np.floor(h / bin_m).astype(int)
        lowest = slices.min()
        count = np.bincount(slices - lowest)
        filled = np.flatnonzero(count)
        mean = np.bincount(slices - lowest, r)[filled] / count[filled]
        return r - np.interp(h, (filled + lowest + 0.5) * bin_m, mean)

    x = least_squares(residuals, np.zeros(4), loss="soft_l1", f_scale=bin_m / 2, diff_step=1e-3).x
    return axis(x)


def revolution_coordinates(points: np.ndarray, centre: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) heights along the axis through ``centre`` with unit direction ``axis`` and (N,) distances from it."""
    offset = points - centre
    h = offset @ axis
    return h, np.linalg.norm(offset - h[:, None] * axis, axis=1)


def revolved_points(points: np.ndarray, normals: np.ndarray, bin_m: float, tol_m: float,
                    min_share: float) -> tuple[np.ndarray, float]:
    """(M,3) points that complete (N,3) points with (N,3) unit normals, a partial view of an object, to the
    surface of revolution they lie on (``revolution_axis``), and the share of the points within ``tol_m`` of
    its profile (the median distance from the axis in each ``bin_m`` slice). A ring of points at each
    slice's profile radius, as far apart as the points are (the median distance to the fourth nearest),
    less those near a point; none if the share is under ``min_share`` (the object is no such surface: a
    box scores 0.2-0.35, a pin's noisy model 0.7-0.9 on the bowling scene)."""
    centre, axis = revolution_axis(points, normals, bin_m)
    h, r = revolution_coordinates(points, centre, axis)
    slices = np.floor(h / bin_m).astype(int)
    heights, slice_of, count = np.unique(slices, return_inverse=True, return_counts=True)
    profile = np.array([np.median(r[slice_of == i]) for i in range(len(heights))])
    share = float(np.mean(np.abs(r - profile[slice_of]) < tol_m))
    if share < min_share:
        return np.zeros((0, 3)), share
    tree = cKDTree(points)
    spacing = np.median(tree.query(points, 5)[0][:, 4])
    u, v = perpendicular_basis(axis)
    rings = []
    for height, radius in zip((heights[count >= 3] + 0.5) * bin_m, profile[count >= 3]):
        angle = np.linspace(0, 2 * np.pi, max(6, int(2 * np.pi * radius / spacing)), endpoint=False)
        rings.append(centre + height * axis + radius * (np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * v))
    ring_points = np.concatenate(rings)
    return ring_points[tree.query(ring_points)[0] > spacing], share


class RigidObjects:
    """Objects as rigid point models tracked through the frames.

    Each object keeps the (M,3) world points it had when first seen (its model), their colours (as a
    chromaticity histogram) and a pose (R, t) that carries them to the current frame; and its share of the
    first frame's visual hull (``hulls``, in the model's frame), which fills in what no model point shows.
    Tracking a frame: predict every pose at constant velocity, then refine all poses jointly by ICP against
    the frame's fused points (each point pairs with the object that ``assign`` gives it, at the nearest
    point of that object's ``surface``: its model and, for a surface of revolution, the model's completion;
    within a radius shrinking from ``icp_radius_m`` to ``track_radius_m``; one Kabsch
    fit per object and step). Because the models never absorb this frame's points, a
    mislabelled point cannot leak into an object and carry its id on to later frames.
    """

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.models: dict[int, np.ndarray] = {}
        self.log_colour: dict[int, np.ndarray] = {}  # colour_log_likelihood of each model
        self.hulls: dict[int, np.ndarray] = {}
        self.completions: dict[int, np.ndarray] = {}  # complete_by_revolution, in the model's frame
        self.surfels: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # model_surfels: from the models
        self.searches: dict[int, tuple] = {}  # search_surface: from the models
        self.poses: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.previous: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, points: np.ndarray, bins: np.ndarray, labels: np.ndarray) -> None:
        """New objects from (N,3) points with (N,) chromaticity bins and (N,) labels (0: none)."""
        for k in np.unique(labels[labels > 0]):
            self.models[int(k)] = points[labels == k]
            self.searches.pop(int(k), None)
            self.log_colour[int(k)] = colour_log_likelihood(bins[labels == k])
            self.hulls[int(k)] = np.zeros((0, 3))
            self.completions[int(k)] = np.zeros((0, 3))
            self.poses[int(k)] = (np.eye(3), np.zeros(3))

    def assign(self, points: np.ndarray, bins: np.ndarray, radius: float, poses=None):
        """(N,) ids of (N,3) points with (N,) chromaticity bins (0: no object within ``radius``) and (N,)
        the index of each point's nearest point in its object's ``surface``: among the objects with a
        posed model point within the radius (``poses``, default the current ones), the one that best
        explains the point's position and colour, log p(colour | object) - d^2 / (2 label_sigma_m^2) with
        d the distance to its nearest model point. Objects of one colour split by distance; a cube's face
        that the model lacks (hidden at the first frame) goes to the cube of its colour, not the nearest."""
        poses = self.poses if poses is None else poses
        if not poses:
            return np.zeros(len(points), int), np.zeros(len(points), int)
        ids = np.array(list(poses), int)
        score = np.full((len(points), len(ids)), -np.inf)
        nearest = np.zeros((len(points), len(ids)), int)
        for j, k in enumerate(ids):
            R, t = poses[k]
            _, tree, centre, extent = self.search_surface(k)
            if tree is None:
                continue
            # Only points within the surface's bounding sphere grown by the radius can have a surface point
            # within the radius: the others keep score -inf without a query.
            reach = extent + radius + 1e-9
            near = np.flatnonzero(((points - (centre @ R.T + t)) ** 2).sum(axis=1) <= reach**2)
            dist, nearest[near, j] = tree.query((points[near] - t) @ R, distance_upper_bound=radius)
            score[near, j] = self.log_colour[k][bins[near]] - 0.5 * (dist / self.cfg["label_sigma_m"]) ** 2
        best = score.argmax(axis=1)
        found = np.isfinite(score[np.arange(len(points)), best])
        return np.where(found, ids[best], 0), nearest[np.arange(len(points)), best]

    def cut_to_silhouettes(self, silhouettes: np.ndarray, K: np.ndarray, T_cw: np.ndarray) -> None:
        """Cut every model (at its current pose) to the (C,H,W) silhouettes of all objects in each view (K
        (C,3,3), T_cw (C,4,4)): a point that projects onto a background pixel of any view it falls into
        lies outside the visual hull. Stereo depth fattens near surfaces by a pixel or two at their edges
        along each camera's rays; the other views see past those points, onto the table."""
        for k, model in self.models.items():
            R, t = self.poses[k]
            self.models[k] = model[in_silhouettes(model @ R.T + t, silhouettes, K, T_cw)]
        self.surfels, self.searches = {}, {}  # made from the models as they were

    def complete_by_revolution(self, silhouettes: np.ndarray, K: np.ndarray, T_cw: np.ndarray) -> None:
        """Complete each model that lies on a surface of revolution (a pin, a ball, a bottle;
        ``revolved_points``) with the rest of that surface, less what falls outside the (C,H,W)
        silhouettes of any view (K (C,3,3), T_cw (C,4,4)), for drawing only (``make_surfels``): the first
        frame shows each object from some sides, and where a later frame shows another side, no model point
        of its own object stands there, and the discs of the object behind it win. On bowling train_0000
        the masks' wrong object pixels fall from 1.73 % to 1.43 % with it (drawing the true shapes instead:
        1.30 %)."""
        cfg = self.cfg
        for k, model in self.models.items():
            if len(model) < cfg["min_points"]:
                continue
            ring, _ = revolved_points(model, point_normals(model, cfg["surfel_neighbours"]), cfg["revolve_bin_m"],
                                      cfg["revolve_tol_m"], cfg["revolve_min_share"])
            R, t = self.poses[k]
            self.completions[k] = ring[in_silhouettes(ring @ R.T + t, silhouettes, K, T_cw)]
            self.surfels.pop(k, None)
            self.searches.pop(k, None)

    @property
    def complete(self) -> list[int]:
        """The objects whose models ``complete_by_revolution`` completed."""
        return [k for k, ring in self.completions.items() if len(ring)]

    def surface(self, k: int) -> np.ndarray:
        """(M,3) object k's model points and then its completion's (``complete_by_revolution``), in its
        model's frame: what the tracking pairs the frame's points with and what is drawn. A pin that rolls
        shows sides the first frame hid; paired with the model alone, their points pull it along the surface
        (bowling train_0001 ``id_consistency`` 0.9890 -> 0.9903 with the completion; cubes have none)."""
        return np.concatenate([self.models[k], self.completions[k]])

    def search_surface(self, k: int) -> tuple[np.ndarray, cKDTree | None, np.ndarray, float]:
        """Object k's (M,3) ``surface``, made once, a k-d tree of it in its model's frame (the frame's points
        are carried into it: one tree for all frames; None if the surface is empty), its (3,) centre and its
        largest distance from it (m)."""
        if k not in self.searches:
            surface = self.surface(k)
            if not len(surface):  # cut away whole: nothing is near it
                return surface, None, np.zeros(3), 0.0
            centre = surface.mean(axis=0)
            self.searches[k] = (surface, cKDTree(surface), centre,
                                float(np.sqrt(((surface - centre) ** 2).sum(axis=1).max())))
        return self.searches[k]

    def make_surfels(self) -> None:
        """Give every model that has none its discs for drawing (``model_surfels``, in the model's frame), one
        per model point and then one per point of its completion (``complete_by_revolution``): all of them
        once the models are cut (``cut_to_silhouettes``), later an object found after the first frame."""
        for k in self.models.keys() - self.surfels.keys():
            self.surfels[k] = model_surfels(self.surface(k), self.cfg["surfel_neighbours"], self.cfg["surfel_radius_scale"],
                                            self.cfg["surfel_smooth_neighbours"])

    def posed_surfels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(M,3) centres, (M,3) normals and (M,) radii of all models' discs (``make_surfels``) at the current
        poses, and their (M,) ids."""
        self.make_surfels()
        points, ids = self.posed(shapes={k: surfels[0] for k, surfels in self.surfels.items()})
        normals = [self.surfels[k][1] @ R.T for k, (R, _) in self.poses.items()]
        radii = [self.surfels[k][2] for k in self.poses]
        if not normals:
            return points, np.zeros((0, 3)), np.zeros(0), ids
        return points, np.concatenate(normals), np.concatenate(radii), ids

    def add_hull(self, hull: np.ndarray, radius: float) -> None:
        """Give every object the (M,3) world points of a visual hull (``visual_hull``) whose nearest posed
        model point, within ``radius``, is its own. A part of an object that one view alone sees holds no
        model point where that view's depth is wrong there (the depth camera does not see it, or smears the
        object in front over it), yet it lies inside the hull, next to the object's other points."""
        model, ids = self.posed()
        if not len(model) or not len(hull):
            return
        dist, nearest = cKDTree(model).query(hull, distance_upper_bound=radius)
        found = np.isfinite(dist)
        owner = ids[nearest[found]]
        for k, (R, t) in self.poses.items():
            self.hulls[k] = (hull[found][owner == k] - t) @ R

    @property
    def next_id(self) -> int:
        return max(self.models, default=0) + 1

    def posed(self, poses=None, shapes=None) -> tuple[np.ndarray, np.ndarray]:
        """(M,3) all model points (or the points of ``shapes``, such as ``hulls``, per object in its model's
        frame) at ``poses`` (default the current ones) and their (M,) ids."""
        poses = self.poses if poses is None else poses
        shapes = self.models if shapes is None else shapes
        if not poses:
            return np.zeros((0, 3)), np.zeros(0, int)
        points = [shapes[k] @ R.T + t for k, (R, t) in poses.items()]
        ids = [np.full(len(shapes[k]), k) for k in poses]
        return np.concatenate(points), np.concatenate(ids)

    def predict(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Poses one frame on at each object's last velocity (rotation and translation)."""
        predicted = {}
        for k, (R, t) in self.poses.items():
            if k in self.previous:
                R0, t0 = self.previous[k]
                dR = R @ R0.T
                predicted[k] = (dR @ R, dR @ t + (t - dR @ t0))
            else:
                predicted[k] = (R, t)
        return predicted

    def track(self, points: np.ndarray, bins: np.ndarray, cameras: np.ndarray) -> np.ndarray:
        """Move every object onto this frame's (N,3) fused points with (N,) chromaticity bins, seen by the
        (N,) cameras; returns their (N,) ids (0 = none)."""
        cfg = self.cfg
        poses = self.predict()
        pairs = {k: 0 for k in poses}
        if len(points) and poses:
            for radius in np.geomspace(cfg["icp_radius_m"], cfg["track_radius_m"], cfg["icp_iterations"]):
                ids, idx = self.assign(points, bins, radius, poses)
                for k in poses:
                    pair = ids == k
                    pairs[k] = int(pair.sum())
                    if pairs[k] < 10:
                        continue
                    Rk, tk = poses[k]
                    R, t = kabsch(self.search_surface(k)[0][idx[pair]] @ Rk.T + tk, points[pair])
                    poses[k] = (R @ Rk, R @ tk + t)
            self.refine_on_planes(points, bins, poses)
        self.previous, self.poses = self.poses, poses
        for k in [k for k, n in pairs.items() if n < 10]:
            self.relocalise(k, points)
        return self.label(points, bins, cameras)

    def refine_on_planes(self, points: np.ndarray, bins: np.ndarray, poses: dict) -> None:
        """Refine ``poses`` in place by ``icp_fine_iterations`` point-to-plane steps (``point_to_plane``, the
        model points' normals from their discs) on the pairs within ``icp_fine_radius_m`` whose offset along
        the normal is under ``icp_fine_gate_m``. The point-to-point steps before leave a bias where the
        frame shows a part of the surface the model lacks, or the model holds a part the frame hides (a pin
        that fell shows its former top and hides a side): those points pair with the model's edge and drag
        it along the surface, on bowling train_0000 to 1.7 mm median distance of the model points from the
        true surface against 0.55 mm at the first frame; the planes let the pairs slide (0.7 mm). The gate
        keeps out another object's surface met at an angle, which otherwise drew pins onto their
        neighbours."""
        cfg = self.cfg
        self.make_surfels()
        for _ in range(cfg["icp_fine_iterations"]):
            ids, idx = self.assign(points, bins, cfg["icp_fine_radius_m"], poses)
            for k, (Rk, tk) in poses.items():
                pair = ids == k
                model = self.search_surface(k)[0][idx[pair]] @ Rk.T + tk
                normals = self.surfels[k][1][idx[pair]] @ Rk.T  # one disc per surface point
                on_plane = np.abs(np.einsum("ij,ij->i", points[pair] - model, normals)) < cfg["icp_fine_gate_m"]
                if on_plane.sum() < 10:
                    continue
                R, t = point_to_plane(model[on_plane], normals[on_plane], points[pair][on_plane],
                                      cfg["icp_fine_point_weight"])
                poses[k] = (R @ Rk, R @ tk + t)

    def relocalise(self, k: int, points: np.ndarray) -> None:
        """Re-find object k, which no fused point supports at its predicted pose (it fell or was struck
        faster than constant velocity predicts), on the (N,3) points no other object claims, in the
        components that reach within ``relocalise_radius_m`` of its predicted centre: ICP from its centre
        moved onto theirs, tilted by 0, 45 and 90 degrees about eight horizontal axes (objects topple);
        the start that explains most points wins if it explains ``min_points``. The object then restarts
        at zero velocity."""
        cfg = self.cfg
        R0, t0 = self.poses[k]
        model = self.models[k]
        centre = model.mean(axis=0) @ R0.T + t0
        others, _ = self.posed({j: pose for j, pose in self.poses.items() if j != k})
        free = points
        if len(others):
            dist, _ = cKDTree(others).query(points, distance_upper_bound=cfg["track_radius_m"])
            free = points[~np.isfinite(dist)]
        # Whole components that reach into the search radius: a cut one would bias the fit.
        parts = connected_objects(free, cfg["voxel_m"], 1)
        reach = np.unique(parts[np.linalg.norm(free - centre, axis=1) < cfg["relocalise_radius_m"]])
        free = free[np.isin(parts, reach[reach > 0])]
        if len(free) < cfg["min_points"]:
            return
        tree = cKDTree(free)
        starts = [np.eye(3)] + [Rotation.from_rotvec(angle * np.array([np.cos(a), np.sin(a), 0.0])).as_matrix()
                                for angle in (np.pi / 4, np.pi / 2) for a in np.arange(8) * np.pi / 4]
        # Far from the start, so more steps than tracking takes: the last radius repeats.
        radii = np.geomspace(cfg["icp_radius_m"], cfg["track_radius_m"], cfg["icp_iterations"])
        radii = np.concatenate([radii, np.full(2 * cfg["icp_iterations"], radii[-1])])
        model_centre, free_centre = model.mean(axis=0), free.mean(axis=0)
        best = (cfg["min_points"] - 1, None)
        for tilt in starts:
            R = tilt @ R0
            T = icp(model, tree, make_T(R, free_centre - model_centre @ R.T), radii)
            R, t = T[:3, :3], T[:3, 3]
            dist, _ = cKDTree(model @ R.T + t).query(free, distance_upper_bound=cfg["track_radius_m"])
            explained = int(np.isfinite(dist).sum())
            if explained > best[0]:
                best = (explained, (R, t))
        if best[1] is not None:
            self.poses[k] = self.previous[k] = best[1]

    def label(self, points: np.ndarray, bins: np.ndarray, cameras: np.ndarray) -> np.ndarray:
        """(N,) ids of fused points with (N,) chromaticity bins, seen by the (N,) cameras: ``assign``
        within ``track_radius_m``. Points left over are grouped into components; one within
        ``reattach_radius_m`` of an object takes its id (fast motion outran the prediction), one further
        away becomes a new object if it holds ``min_points`` and two cameras see it (``seen_by_cameras``)."""
        cfg = self.cfg
        if len(points) == 0:
            return np.zeros(0, int)
        labels, _ = self.assign(points, bins, cfg["track_radius_m"])
        model, ids = self.posed()
        tree = cKDTree(model) if len(model) else None
        far = np.flatnonzero(labels == 0)
        groups = connected_objects(points[far], cfg["voxel_m"], 1)
        for g in range(1, int(groups.max()) + 1 if len(groups) else 1):
            members = far[groups == g]
            if tree is not None:
                dist, idx = tree.query(points[members], distance_upper_bound=cfg["reattach_radius_m"])
                if np.isfinite(dist).any():
                    labels[members] = ids[idx[np.argmin(dist)]]
                    continue
            if len(members) >= cfg["min_points"] and seen_by_cameras(cameras[members], cfg):
                new = self.next_id
                labels[members] = new
                self.add(points[members], bins[members], np.full(len(members), new))
        return labels


def label_views(per_view: list, shape: tuple[int, int], objects: RigidObjects, cfg: dict) -> np.ndarray:
    """(C,H,W) ids of all views from each view's pixels' (world points, flat indices, chromaticity bins):
    a point above the table takes the id ``objects.assign`` gives it within ``label_radius_m`` (one call
    for all views, so each object's posed model is searched once). The pixel's own depth decides what it
    sees, so occluded objects do not paint over the ones in front."""
    points = np.concatenate([p for p, _, _ in per_view])
    bins = np.concatenate([b for _, _, b in per_view])
    above = points[:, 2] > cfg["table_clearance_m"] / 2
    ids = np.zeros(len(points), np.uint16)
    ids[above] = objects.assign(points[above], bins[above], cfg["label_radius_m"])[0]
    images = np.zeros((len(per_view), shape[0] * shape[1]), np.uint16)
    start = 0
    for c, (p, flat, _) in enumerate(per_view):
        images[c, flat] = ids[start:start + len(p)]
        start += len(p)
    return images.reshape(len(per_view), *shape)


def front_model_ids(points: np.ndarray, ids: np.ndarray, K: np.ndarray, T_cw: np.ndarray,
                    shape: tuple[int, int]) -> np.ndarray:
    """(H,W) the id of the nearest of the (N,3) posed model points with (N,) ids that project into each
    pixel of one camera (0: none)."""
    H, W = shape
    rows, cols, inside, z = pixels_in_view(points, K, T_cw, shape)
    if not inside.any():
        return np.zeros((H, W), ids.dtype)
    flat = rows * W + cols
    z, ids = z[inside], ids[inside]
    order = np.lexsort((z, flat))  # by pixel, nearest first
    first = order[np.r_[True, flat[order][1:] != flat[order][:-1]]]
    front = np.zeros(H * W, ids.dtype)
    front[flat[first]] = ids[first]
    return front.reshape(H, W)


def model_surfels(points: np.ndarray, neighbours: int, radius_scale: float,
                  smooth_neighbours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,3) centres, (N,3) unit normals and (N,) radii (m) of the discs that stand for (N,3) model points
    when the model is drawn (``front_surfel_ids``): the plane of each point's ``neighbours`` nearest points;
    ``radius_scale`` times the points' spacing there (the median over those neighbours of the distance to
    their fourth nearest point), which closes the gaps between the points without reaching far past the
    model's outline: a point on the outline has its nearest points on one side only, and its own fourth
    would make its disc the largest; and the point moved along that normal onto the mean of its
    ``smooth_neighbours`` nearest points (0: not moved). The depth's noise scatters the points across the
    surface, and where the surface turns away from a camera that scatter widens the model's outline: on
    bowling val_0000 the smoothed discs give 1.43 % of the object pixels to the wrong object against 1.60 %.
    Fewer than five points get no discs (radius 0)."""
    if len(points) < 5:
        return points.copy(), np.zeros((len(points), 3)), np.zeros(len(points))
    tree = cKDTree(points)
    dist, near = tree.query(points, max(5, min(neighbours, len(points))))
    spacing = np.median(dist[:, 4][near], axis=1)
    normals = point_normals(points, neighbours)
    centres = points
    if smooth_neighbours:
        _, around = tree.query(points, np.arange(1, min(smooth_neighbours, len(points)) + 1))  # (N,k) also for k = 1
        offset = np.einsum("ij,ij->i", points - points[around].mean(axis=1), normals)
        centres = points - offset[:, None] * normals
    return centres, normals, radius_scale * spacing


def front_surfel_ids(centres: np.ndarray, normals: np.ndarray, radii: np.ndarray, ids: np.ndarray, K: np.ndarray,
                     T_cw: np.ndarray, shape: tuple[int, int], max_px: int = 3) -> np.ndarray:
    """(H,W) the id of the nearest of the (N,3) world discs (``centres``, unit ``normals``, ``radii`` in m,
    (N,) ``ids``) whose plane the ray through a pixel's centre meets within its radius, in one camera (0:
    none). A disc is tried on the pixels within ``max_px`` of its centre's.

    A model drawn as points gives each point's pixel whole: wherever a point falls within the pixel,
    so the model in front spreads over the one behind by half a pixel on average. The ground truth (and
    any renderer) takes what the pixel's centre sees; so do the discs, and a disc at the outline, which
    faces across the ray, reaches little beyond it. With the true shapes and poses of bowling val_0000
    (2,000 surface points an object, every third frame), 1.8 % of the object pixels drawn as points took
    the wrong object, 0.6 % drawn as discs (``model_surfels`` with 40 neighbours and a scale of 0.7)."""
    H, W = shape
    cam = transform_points(T_cw, centres)
    n = normals @ T_cw[:3, :3].T
    ahead = cam[:, 2] > 1e-3
    cam, n, radii, ids = cam[ahead], n[ahead], radii[ahead], ids[ahead]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # Each disc is tried out to a pixel beyond its radius in pixels, at most max_px (most discs are
    # far smaller than the largest); sorted by that reach, the discs tried at an offset are a prefix.
    radius_px = np.ceil(radii * max(fx, fy) / cam[:, 2]) if len(cam) else np.zeros(0)
    reach = int(min(max_px, radius_px.max())) if len(cam) else 0
    disc_reach = np.minimum(radius_px + 1, reach)
    order = np.argsort(-disc_reach, kind="stable")
    cam, n, radii, ids, disc_reach = cam[order], n[order], radii[order], ids[order], disc_reach[order]
    u0 = np.rint(fx * cam[:, 0] / cam[:, 2] + cx).astype(int)
    v0 = np.rint(fy * cam[:, 1] / cam[:, 2] + cy).astype(int)
    plane = np.einsum("ij,ij->i", n, cam)
    flat, depth, hit_ids = [], [], []
    for dv in range(-reach, reach + 1):
        for du in range(-reach, reach + 1):
            m = np.searchsorted(-disc_reach, -max(abs(du), abs(dv)), side="right")  # those reaching this far
            u, v = u0[:m] + du, v0[:m] + dv
            ray = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones(len(u))], axis=1)  # z = 1
            facing = np.einsum("ij,ij->i", n[:m], ray)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = plane[:m] / facing  # the depth at which the ray meets the disc's plane
                hit = ((u >= 0) & (u < W) & (v >= 0) & (v < H) & (np.abs(facing) > 1e-6) & (z > 0)
                       & (((ray * z[:, None] - cam[:m]) ** 2).sum(axis=1) <= radii[:m] ** 2))
            flat.append(v[hit] * W + u[hit])
            depth.append(z[hit])
            hit_ids.append(ids[:m][hit])
    flat, depth, hit_ids = np.concatenate(flat), np.concatenate(depth), np.concatenate(hit_ids)
    front = np.zeros(H * W, ids.dtype)
    if len(flat):
        order = np.lexsort((depth, flat))  # by pixel, nearest first
        first = order[np.r_[True, flat[order][1:] != flat[order][:-1]]]
        front[flat[first]] = hit_ids[first]
    return front.reshape(H, W)


def front_ids(discs: tuple, hull: np.ndarray, hull_ids: np.ndarray, K: np.ndarray, T_cw: np.ndarray,
              shape: tuple[int, int], supersample: int = 1) -> np.ndarray:
    """(S*H,S*W) the id of the posed model in front along S x S rays through each pixel of one camera
    (``supersample`` S, odd: the middle ray passes through the pixel's centre; the others are spread
    evenly across it) (``front_surfel_ids`` of the models' ``discs`` from ``RigidObjects.posed_surfels``)
    and, where no model shows, of the (M,3) hull points with (M,) ids at the pixel (``RigidObjects.add_hull``,
    ``front_model_ids``); 0 where neither shows. The hull only fills in: it is fatter than the models,
    which are cut to the silhouettes point by point. ``[S // 2::S, S // 2::S]`` is what each pixel's centre
    sees."""
    S = supersample
    K_rays = K.astype(np.float64)  # a camera with S x S pixels per pixel, their centres spread as above
    K_rays[:2] *= S
    K_rays[:2, 2] += (S - 1) / 2
    H, W = shape
    front = front_surfel_ids(*discs, K_rays, T_cw, (S * H, S * W), max_px=3 * S)
    hull_front = np.repeat(np.repeat(front_model_ids(hull, hull_ids, K, T_cw, shape), S, axis=0), S, axis=1)
    return np.where(front > 0, front, hull_front)


def reassign_by_models(view: np.ndarray, front: np.ndarray, bins: np.ndarray, log_colour: dict,
                       margin: float) -> np.ndarray:
    """(H,W) ids of one view with each labelled pixel where a posed model shows in front of the others
    (``front``, from ``front_ids``) given to that model's object, when its colour model explains the
    pixel's (H,W) chromaticity bin within ``margin`` nats of its own id's. Where one object stands in front
    of another, the near one's depth smears a few pixels over the far one, so the depth gives those pixels
    the near id; its model, fused from all views and cut to their silhouettes (``RigidObjects.cut_to_silhouettes``),
    ends at its true outline, and the far object's model shows there. Objects of one colour (pins) are told
    apart by this alone; a face that a model lacks (hidden at the first frame), through which another
    model shows, keeps its id where that object's colour does not fit."""
    move = (view > 0) & (front > 0) & (front != view)
    candidate_bins = bins[move]

    def log_p(ids):  # log p(colour | object) of the candidate pixels under (M,) ids
        out = np.zeros(len(ids))
        for k in np.unique(ids):
            out[ids == k] = log_colour[int(k)][candidate_bins[ids == k]]
        return out

    move[move] = log_p(front[move]) >= log_p(view[move]) - margin
    return np.where(move, front, view).astype(view.dtype)


class TableParallax:
    """Which pixels show the table, by colour consistency of the table plane across views.

    A pixel of view c that shows the table shows the point X where its ray meets the plane z = 0, and
    every other camera that sees X shows the same colour there (a shadow on the table too: it lies on the
    plane). A pixel showing an object above the table shows something else than the table point behind
    it. For each pixel whose X lies in the workspace we sample the other views at X's projection (bilinear;
    a camera votes only where its own depth says it sees X, within ``table_visibility_m``): the pixel is
    table if any voting camera agrees within ``table_colour_tolerance`` (largest channel difference, 0-255),
    object if all disagree, undecided if none votes. This gives silhouettes at the colour image's own
    resolution, where stereo depth smears them over several pixels. Near an object's base the table point
    is almost the object's own point, so the last few millimetres above the table read as table.
    """

    def __init__(self, K: np.ndarray, T_cw: np.ndarray, shape: tuple[int, int], cfg: dict):
        C = len(K)
        H, W = shape
        (x0, y0), (x1, y1) = cfg["workspace_xy_m"]
        self.cfg, self.shape = cfg, shape
        self.maps: dict[tuple[int, int], tuple] = {}
        for c in range(C):
            T_wc = invert_T(T_cw[c])
            rays = pixel_rays(K[c], W, H) @ T_wc[:3, :3].T
            with np.errstate(divide="ignore", invalid="ignore"):
                s = -T_wc[2, 3] / rays[:, 2]
            X = T_wc[:3, 3] + s[:, None] * rays
            on_table = (s > 0) & (X[:, 0] > x0) & (X[:, 0] < x1) & (X[:, 1] > y0) & (X[:, 1] < y1)
            for o in range(C):
                if o == c:
                    continue
                uv, z = project(K[o], T_cw[o], X)
                inside = on_table & (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1) & (uv[:, 1] >= 0) \
                    & (uv[:, 1] <= H - 1)
                uv[~inside] = -1
                self.maps[c, o] = (uv[:, 0].reshape(H, W).astype(np.float32),
                                   uv[:, 1].reshape(H, W).astype(np.float32),
                                   inside.reshape(H, W), z.reshape(H, W).astype(np.float32))

    def classify(self, colour: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """colour (C,H,W,3) uint8, depth (C,H,W) metres -> (C,H,W) masks ``decided`` and ``table``."""
        C = len(colour)
        smooth = [cv2.GaussianBlur(colour[c].astype(np.float32), (3, 3), 0.7) for c in range(C)]
        decided = np.zeros((C, *self.shape), bool)
        table = np.zeros((C, *self.shape), bool)
        for (c, o), (u, v, inside, z) in self.maps.items():
            seen = cv2.remap(depth[o].astype(np.float32), u, v, cv2.INTER_NEAREST)
            votes = inside & (seen > 0) & (np.abs(seen - z) < self.cfg["table_visibility_m"])
            there = cv2.remap(smooth[o], u, v, cv2.INTER_LINEAR)
            agree = np.abs(there - smooth[c]).max(axis=-1) < self.cfg["table_colour_tolerance"]
            decided[c] |= votes
            table[c] |= votes & agree
        return decided, table


def object_colour_probability(colour: np.ndarray, decided: np.ndarray, table: np.ndarray, near: np.ndarray,
                              levels: int = 16) -> np.ndarray:
    """(C,H,W) probability that a pixel shows an object rather than the table, from its colour alone.

    A colour histogram (``levels`` per channel) is learnt per frame from the pixels the table parallax
    decided, in all views, within reach of an object (``near``, (C,H,W)), so the table class holds the
    objects' own shadows. It carries the decision where the parallax cannot (no other view sees the table
    point behind a pixel: the bases of objects, the gaps in a cluster) and overrules it where it is sure
    (an object's colour that happens to match the table point behind it)."""
    step = 256 // levels
    q = colour.astype(np.int64) // step
    code = (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]
    n_object = np.bincount(code[near & decided & ~table], minlength=levels ** 3)
    n_table = np.bincount(code[near & decided & table], minlength=levels ** 3)
    return ((n_object + 0.5) / (n_object + n_table + 1.0))[code]  # half a count each way: unseen colours 0.5


def nearest_ids(ids: np.ndarray, fill_px: int) -> np.ndarray:
    """(H,W) the id of the nearest labelled pixel of ``ids`` within ``fill_px`` pixels (0 beyond)."""
    if not (ids > 0).any():
        return np.zeros_like(ids)
    dist, (iy, ix) = ndimage.distance_transform_edt(ids == 0, return_indices=True)
    return np.where(dist <= fill_px, ids[iy, ix], 0).astype(ids.dtype)


def refine_view(near_ids: np.ndarray, decided: np.ndarray, table: np.ndarray, p_object: np.ndarray,
                sure: float) -> np.ndarray:
    """(H,W) ids (``nearest_ids`` of the depth's ids) cut to the image-space foreground: the table
    parallax decides unless the colour model is surer than ``sure``; the colour model alone where the
    parallax could not decide."""
    fg = np.where(decided, np.where(table, p_object > sure, p_object > 1 - sure), p_object > 0.5)
    fg = ndimage.binary_fill_holes(ndimage.binary_opening(fg))
    return np.where(fg, near_ids, 0).astype(near_ids.dtype)


def colour_relabel(ids: np.ndarray, bins: np.ndarray, log_colour: dict, radius_px: int,
                   margin: float) -> np.ndarray:
    """(H,W) ids with each labelled pixel near another object moved to the object, among those labelled
    within ``radius_px`` of it, whose colour model explains its (H,W) chromaticity bin best, when that beats
    its own id by more than ``margin`` (nats of log p(colour | object), ``log_colour``). Where one object
    stands in front of another, the registered depth smears the near one's depth a pixel or two over the
    far one's edge, so those pixels take the near object's id; their colour says otherwise where the two
    differ in colour (touching cubes). Objects of one colour keep the depth's decision."""
    present = [k for k in np.unique(ids) if k > 0]
    if len(present) < 2 or radius_px == 0:
        return ids
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    score = np.full((len(present), *ids.shape), -np.inf)
    for j, k in enumerate(present):
        reach = cv2.dilate((ids == k).astype(np.uint8), kernel) > 0
        score[j][reach] = log_colour[int(k)][bins[reach]]
    best = score.argmax(axis=0)
    # Each pixel's score under its own id (background pixels read some row; they are never moved).
    own = np.take_along_axis(score, np.searchsorted(present, ids)[None].clip(0, len(present) - 1), 0)[0]
    better = (ids > 0) & (score.max(axis=0) > own + margin)
    out = ids.copy()
    out[better] = np.asarray(present, ids.dtype)[best[better]]
    return out


def guided_relabel(ids: np.ndarray, colour: np.ndarray, radius_px: int, eps: float,
                   drawn: np.ndarray | None = None, drawn_weight: float = 0.0) -> np.ndarray:
    """(H,W) ids with each object pixel given to the object whose (H,W) indicator image, smoothed by a
    guided filter (He et al.; window radius ``radius_px``, regularisation ``eps`` on colours scaled to 0-1)
    with the (H,W,3) uint8 colour image as guide, is largest there; background pixels stay background.
    A guided filter's output follows the guide's edges, so a boundary between two objects that the depth
    and the models place a pixel off moves to where the image changes, and isolated wrong pixels go to the
    object around them (bowling val_0000 ``id_consistency`` 0.979 -> 0.984, ``miou`` 0.892 -> 0.901).

    Between two objects of one colour (two white pins) the image has little edge to follow, and the filter
    moves as many boundary pixels wrong as right. With ``drawn``, the (S*H,S*W) ids of the posed models
    along S x S rays a pixel (``front_ids``), each object's score is ``1 - drawn_weight`` times its filtered
    indicator plus ``drawn_weight`` times the share of the pixel's rays that meet its model: where two
    models meet inside a pixel, the one that covers more of it wins unless the image clearly says
    otherwise (bowling train_0000 ``id_consistency`` 0.9893 -> 0.9908 with a weight of 0.3; with 2 x 2 to
    8 x 8 rays a pixel the same within 0.0002: the models' poses limit it, not the rays)."""
    present = np.array([k for k in np.unique(ids) if k > 0], ids.dtype)
    if len(present) < 2 or radius_px == 0:
        return ids
    guided = cv2.ximgproc.createGuidedFilter(colour.astype(np.float32) / 255, radius_px, eps)  # the guide's
    score = np.stack([guided.filter((ids == k).astype(np.float32)) for k in present])  # statistics, once
    if drawn is not None and drawn_weight > 0 and drawn.any():
        H, W = ids.shape
        S = drawn.shape[0] // H
        row = np.zeros(int(max(present.max(), drawn.max())) + 1, int)  # each present id's row; 0: others
        row[present] = np.arange(1, len(present) + 1)
        pixel = (np.arange(S * H)[:, None] // S) * W + np.arange(S * W)[None, :] // S
        covered = np.bincount((row[drawn] * H * W + pixel).ravel(), minlength=(len(present) + 1) * H * W)
        covered = covered[H * W:].reshape(len(present), H, W) / S**2
        score = (1 - drawn_weight) * score + drawn_weight * covered
    return np.where(ids > 0, present[score.argmax(axis=0)], 0).astype(ids.dtype)


class FusedFrames:
    """The fused foreground points of an episode, frame by frame, from its depth artifact (and, to split
    touching objects at the first frame, its (C,T,H,W,3) colour frames)."""

    def __init__(self, depth_art, colour, T_cw: np.ndarray, cfg: dict, source: str):
        self.source = source  # the depth artifact's path, for messages
        self.depth, self.confidence, self.colour = depth_art["depth"], depth_art["confidence"], colour
        self.K, self.T_cw, self.cfg = depth_art["K"][:], T_cw, cfg
        self.min_conf = self.confidence.attrs["measured"] if cfg["measured_only"] else 1
        self._frame: tuple = (None, None, None)

    def frame_colour(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame t's (C,H,W,3) colour images and their (C,H,W) chromaticity bins, read and binned once for
        the fusion and the labelling steps that follow it."""
        if self._frame[0] != t:
            colour = np.asarray(self.colour[:, t])
            self._frame = (t, colour, chromaticity_bins(colour.reshape(-1, 3)).reshape(colour.shape[:3]))
        return self._frame[1], self._frame[2]

    def fuse(self, t: int):
        """Frame t's (C,H,W) depths; per view its pixels' (world points, flat pixel indices, chromaticity
        bins) and the mask of those points that are fused: in the foreground and not carved away."""
        cfg, K, T_cw = self.cfg, self.K, self.T_cw
        depths, confidence = self.depth[:, t], self.confidence[:, t]
        _, image_bins = self.frame_colour(t)
        per_view = []
        for c in range(len(K)):
            points, flat = world_points(depths[c], K[c], T_cw[c])
            per_view.append((points, flat, image_bins[c].ravel()[flat]))
        fused = [foreground(p, cfg) & (confidence[c].ravel()[flat] >= self.min_conf)
                 for c, (p, flat, _) in enumerate(per_view)]
        for c, ((p, _, _), m) in enumerate(zip(per_view, fused)):
            m[m] = carve(p[m], c, depths, K, T_cw, cfg["carve_margin_m"], cfg["carve_votes"])
        return depths, per_view, fused

    def __call__(self, t: int):
        """Frame t's (C,H,W) depths, per view (world points, flat pixel indices, chromaticity bins) of its
        pixels with depth, and the (N,3) fused, carved foreground points of all views with their (N,) bins
        and (N,) camera indices."""
        depths, per_view, fused = self.fuse(t)
        points = np.concatenate([p[m] for (p, _, _), m in zip(per_view, fused)])
        bins = np.concatenate([b[m] for (_, _, b), m in zip(per_view, fused)])
        cameras = np.concatenate([np.full(m.sum(), c) for c, m in enumerate(fused)])
        return depths, per_view, points, bins, cameras

    def first_objects(self):
        """The first frame as from ``self(0)``, with the fused points' object labels 1..K: 3D connectivity,
        then each connected object cut where its colours split (``split_by_colour``); a part that too few
        cameras see (``seen_by_cameras``) is no object."""
        cfg = self.cfg
        depths, per_view, points, bins, cameras = self(0)
        labels = connected_objects(points, cfg["voxel_m"], cfg["min_points"])
        labels = split_by_colour(points, bins, labels, cfg["min_points"], cfg["colour_split_overlap"])
        seen = [k for k in np.unique(labels[labels > 0]) if seen_by_cameras(cameras[labels == k], cfg)]
        if not seen:
            raise MasksError(f"{self.source}: nothing stands above the table in two views at the first "
                             f"frame (clearance {cfg['table_clearance_m']} m); is the calibration right?")
        relabel = np.zeros(labels.max() + 1, int)
        relabel[seen] = np.arange(1, len(seen) + 1)
        return depths, per_view, points, bins, cameras, relabel[labels]


def first_frame_hull(silhouettes: np.ndarray, depths: np.ndarray, frames: FusedFrames, objects: RigidObjects,
                     cfg: dict) -> np.ndarray:
    """(M,3) the visual hull (``visual_hull``) of the first frame's (C,H,W) silhouettes in ``hull_voxel_m``
    cells over the objects' models and ``label_radius_m`` around them, above the table. The silhouettes are
    eroded by ``hull_erode_px`` first: four views cut a round pin to a polygon around it and a pixel partly on
    an object counts whole, and where the hull of the object in front shows beside its model it takes the
    pixels of the one behind (bowling train_0001 ``id_consistency`` 0.971 without, 0.974 with one pixel)."""
    if cfg["hull_erode_px"]:
        silhouettes = np.stack([ndimage.binary_erosion(s, iterations=cfg["hull_erode_px"]) for s in silhouettes])
    voxel, reach = cfg["hull_voxel_m"], cfg["label_radius_m"]
    boxes = [(m.min(axis=0) - reach, m.max(axis=0) + reach) for m in objects.models.values() if len(m)]
    if not boxes:
        return np.zeros((0, 3))
    # One grid over all the models' boxes, but only its cells in some object's box: a hull cell further
    # than label_radius_m from every model point goes to no object (``add_hull``).
    lo, hi = np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
    lo[2] = max(lo[2], 0.0)
    size = np.array([len(np.arange(a + voxel / 2, b, voxel)) for a, b in zip(lo, hi)])
    cells = []
    for box_lo, box_hi in boxes:
        first = np.clip(np.floor((box_lo - lo) / voxel).astype(int), 0, size)
        last = np.clip(np.ceil((box_hi - lo) / voxel).astype(int), 0, size)
        axes = [np.arange(f, e) for f, e in zip(first, last)]
        cells.append(np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), size).ravel())
    cells = np.unravel_index(np.unique(np.concatenate(cells)), size)
    centres = np.stack([lo[d] + voxel / 2 + cells[d] * voxel for d in range(3)], -1)
    return visual_hull(centres, silhouettes, depths, frames.K, frames.T_cw, cfg["carve_margin_m"])


def fused_ids(frames: FusedFrames, ids, cfg: dict) -> tuple[np.ndarray, int]:
    """The offline backend: writes (C,T,H,W) ``ids`` frame by frame from the fused depth and the colour
    frames; returns the objects seen per frame and the number of objects."""
    C, T, H, W = ids.shape
    objects = RigidObjects(cfg)
    parallax = TableParallax(frames.K, frames.T_cw, (H, W), cfg) if cfg["parallax_refine"] else None
    counts = np.zeros(T, int)
    for t in tqdm(range(T), desc="masks (fused)", unit="frame", file=sys.stderr):
        if t == 0:
            depths, per_view, points, bins, cameras, first = frames.first_objects()
            objects.add(points, bins, first)
            labels = objects.label(points, bins, cameras)
        else:
            depths, per_view, points, bins, cameras = frames(t)
            labels = objects.track(points, bins, cameras)
        views = label_views(per_view, (H, W), objects, cfg)
        frame_colour, image_bins = frames.frame_colour(t)
        if parallax is not None:
            decided, table = parallax.classify(frame_colour, depths)
            near_ids = np.stack([nearest_ids(v, cfg["fill_px"]) for v in views])
            # Where a pixel's own depth stands above the table, a table vote of the parallax is doubtful (the
            # face of a box just above its base shows the colour the others see there): colour decides.
            height = np.zeros((C, H * W))
            for c, (p, flat, _) in enumerate(per_view):
                height[c, flat] = p[:, 2]
            decided &= ~(table & (height.reshape(C, H, W) > cfg["table_clearance_m"]))
            p_object = object_colour_probability(frame_colour, decided, table, near_ids > 0)
            views = np.stack([refine_view(near_ids[c], decided[c], table[c], p_object[c], cfg["colour_override_p"])
                              for c in range(C)])
        if cfg["relabel_px"]:
            views = np.stack([colour_relabel(views[c], image_bins[c], objects.log_colour, cfg["relabel_px"],
                                             cfg["relabel_margin"]) for c in range(C)])
        drawn = [None] * C  # the complete models along model_supersample^2 rays a pixel
        if cfg["model_front"]:
            if t == 0:
                objects.cut_to_silhouettes(views > 0, frames.K, frames.T_cw)
                if cfg["model_revolve"]:
                    objects.complete_by_revolution(views > 0, frames.K, frames.T_cw)
                if cfg["model_hull"]:
                    objects.add_hull(first_frame_hull(views > 0, depths, frames, objects, cfg), cfg["label_radius_m"])
            discs = objects.posed_surfels()
            hull, hull_ids = objects.posed(shapes=objects.hulls)
            S = cfg["model_supersample"]
            for c in range(C):
                rays = front_ids(discs, hull, hull_ids, frames.K[c], frames.T_cw[c], (H, W), S)
                views[c] = reassign_by_models(views[c], rays[S // 2::S, S // 2::S], image_bins[c],
                                              objects.log_colour, cfg["relabel_margin"])
                # Only a complete model's cover is evidence: through a cube's face hidden at the first
                # frame, the model behind shows (cube_stacks val_0000 id_consistency 0.9970 -> 0.9949).
                drawn[c] = np.where(np.isin(rays, objects.complete), rays, 0)
        views = np.stack([guided_relabel(views[c], frame_colour[c], cfg["guided_radius_px"], cfg["guided_eps"],
                                         drawn[c], cfg["guided_model_weight"]) for c in range(C)])
        ids[:, t] = views
        counts[t] = len(np.unique(labels[labels > 0]))
    return counts, len(objects.models)


def write_masks(capture_path: str, depth_path: str, calibration_path: str, cfg: dict, out: str) -> dict:
    capture = open_artifact(capture_path, "capture")
    depth_art = open_artifact(depth_path, "depth")
    cal = open_artifact(calibration_path, "calibration")
    names = same_cameras(MasksError, (depth_path, depth_art), (calibration_path, cal), (capture_path, capture))
    C, T, H, W = depth_art["depth"].shape
    if capture["color"].shape[:4] != (C, T, H, W):
        raise MasksError(f"{capture_path}: colour frames {capture['color'].shape[:4]} do not match the depth "
                         f"{(C, T, H, W)} of {depth_path}")
    frames = FusedFrames(depth_art, capture["color"], cal["T_cw_color"][:], cfg, str(depth_path))
    backend = cfg["backend"]
    if backend == "sam2":
        from . import sam2_masks  # torch and sam2 are imported only when asked for

        predictor = sam2_masks.build_predictor(cfg["sam2"])  # fails early, before an artifact is started
    attrs = {k: depth_art.attrs[k] for k in ("scene", "episode", "split", "camera_names")}
    with ArtifactWriter(out, "masks", "masks", cfg, **attrs, backend=backend, source_capture=str(capture_path),
                        source_depth=str(depth_path), source_calibration=str(calibration_path)) as g:
        ids = frame_array(g, "ids", (C, T, H, W), "uint16")
        ids.attrs.update(background=0)
        if backend == "fused":
            counts, n_objects = fused_ids(frames, ids, cfg)
        else:
            prompts = sam2_masks.prompts_for(frames, names, cfg["sam2"], (H, W))
            counts, n_objects = sam2_masks.segment_views(predictor, capture["color"], prompts, ids)
        put(g, "objects_per_frame", counts)
        g.attrs["n_objects"] = n_objects
    return {"n_objects": n_objects, "objects_per_frame": counts}


def main(argv=None) -> int:
    def run(args, cfg):
        result = write_masks(args.capture, args.depth, args.calibration, cfg, args.out)
        counts = result["objects_per_frame"]
        return f"{result['n_objects']} objects; per frame {counts.min()}..{counts.max()}"

    return stage_main(argv, "masks", __doc__,
                      {"capture": "capture artifact of the episode (colour images)",
                       "depth": "depth artifact of the episode", "calibration": "calibration artifact of the rig"},
                      (MasksError,), run)


if __name__ == "__main__":
    # Run the imported module's main: the backends raise pipeline.masks.MasksError, not __main__'s.
    from pipeline.masks import main as module_main

    sys.exit(module_main())
