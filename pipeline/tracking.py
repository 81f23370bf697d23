"""Stage `tracking`: Gaussians fitted to the first frame, then tracked through the episode.

    python -m pipeline.tracking --capture results/bowling/capture/train_0000.zarr \\
        --depth results/bowling/depth/train_0000.zarr --masks results/bowling/masks/train_0000.zarr \\
        --calibration results/bowling/calibration.zarr --config config.yaml --scene bowling \\
        --out results/bowling/tracking/train_0000.zarr

First frame: the masked depth of all views, less a margin along the mask edges, is lifted into the world,
voxel-averaged and made into isotropic Gaussians (colour from the pixels, size from the neighbour
spacing, the mask's object id as the Gaussian's segmentation label). Colours, opacities, scales,
positions and rotations are then optimised against all views (0.8 L1 + 0.2 D-SSIM on colour, plus L1 of
the rendered per-object colours against the masks), with pruning of transparent Gaussians and
densification where the positional gradient is large. The table and background are a fixed image per view
(the median of the pixels the masks call background over the episode) that the objects' render is
composited over, so they never pull object Gaussians and stay static by construction.

Later frames, after Dynamic 3D Gaussians (Luiten et al. 2024) as GS-Dynamics uses it: colours,
opacities and scales are frozen; positions and rotations start from a constant-velocity prediction,
optionally moved per object by a rigid ICP onto the frame's masked depth (``prealign``; a ball, whose
depth shows none of its turns, is rolled along its registered shift; a box on the table is laid flat),
and are optimised with the image and segmentation losses plus local rigidity, rotation similarity and isometry
over k nearest neighbours of the same object (weights exp(-w d^2), d in metres, from the first frame)
and a floor term (no Gaussian centre below the table).

Artifact: per-frame means (T,N,3) and quaternions (T,N,4, x y z w) and the frozen per-Gaussian scales
(N,3), opacities (N,), colours (N,3) and first-frame mask labels (N,).
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import maximum_filter, minimum_filter
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from .artifact import ArtifactWriter, open_artifact, put, same_cameras
from .config import stage_main
from .geometry import (icp, invert_T, make_T, perpendicular_basis, point_normals, rotation_angle_deg,
                       transform_points)
from .masks import world_points
from .splat import quat_to_rotmat, render, resolve_backend


class TrackingError(RuntimeError):
    """Tracking cannot run on these inputs; the message names the file, camera or frame."""


# -- image losses ------------------------------------------------------------------------------------

def _gauss_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    w = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (B,H,W,3) images in [0, 1] (11-pixel Gaussian window, separable)."""
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    ch = x.shape[1]
    w = _gauss_window().to(x)
    wx, wy = w.reshape(1, 1, 1, -1).repeat(ch, 1, 1, 1), w.reshape(1, 1, -1, 1).repeat(ch, 1, 1, 1)

    def blur(z):
        return F.conv2d(F.conv2d(z, wx, padding=(0, 5), groups=ch), wy, padding=(5, 0), groups=ch)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.mean()


# -- the Gaussians -------------------------------------------------------------------------------------

class Gaussians:
    """Per-Gaussian parameters (torch leaves, optimised in their unconstrained forms)."""

    def __init__(self, means, colours, labels, scales, device: torch.device):
        n = len(means)
        self.means = torch.as_tensor(means, dtype=torch.float32, device=device).clone()
        self.quats = torch.zeros(n, 4, device=device)
        self.quats[:, 3] = 1.0
        self.log_scales = torch.log(torch.as_tensor(scales, dtype=torch.float32, device=device))[:, None].repeat(1, 3)
        self.opacity_logits = torch.full((n,), 2.0, device=device)  # sigmoid(2) = 0.88
        self.colours = torch.as_tensor(colours, dtype=torch.float32, device=device).clone()
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=device).clone()

    @property
    def scales(self):
        return torch.exp(self.log_scales)

    @property
    def opacities(self):
        return torch.sigmoid(self.opacity_logits)

    def select(self, keep: torch.Tensor) -> None:
        for name in ("means", "quats", "log_scales", "opacity_logits", "colours", "labels"):
            setattr(self, name, getattr(self, name)[keep].detach().clone())

    def append(self, **values) -> None:
        for name, v in values.items():
            setattr(self, name, torch.cat([getattr(self, name).detach(), v.detach()]))


class Frame:
    """One frame of all cameras: colour (C,H,W,3) in [0, 1] and mask ids (C,H,W)."""

    def __init__(self, colour: np.ndarray, ids: np.ndarray, n_ids: int, device: torch.device):
        self.rgb = torch.from_numpy(colour).to(device).float() / 255.0
        ids = torch.from_numpy(ids.astype(np.int64)).to(device)
        self.seg = F.one_hot(ids.clamp(max=n_ids), n_ids + 1)[..., 1:].float()   # (C,H,W,M)


class Views:
    """The calibrated cameras and the static background the objects are composited over."""

    def __init__(self, K: np.ndarray, T_cw: np.ndarray, background: np.ndarray, backend: str, device: torch.device):
        self.K = torch.as_tensor(K, dtype=torch.float32, device=device)
        self.T_cw = torch.as_tensor(T_cw, dtype=torch.float32, device=device)
        self.background = torch.from_numpy(background).to(device).float() / 255.0      # (C,H,W,3)
        self.height, self.width = background.shape[1:3]
        self.backend = resolve_backend(backend, self.K.device)

    def render(self, g: Gaussians, means, quats, n_ids: int):
        features = torch.cat([g.colours.clamp(0, 1), F.one_hot(g.labels, n_ids + 1)[:, 1:].float()], 1)
        out = render(means, quats, g.scales, g.opacities, features, self.K, self.T_cw, self.width, self.height,
                     backend=self.backend)
        rgb = out.features[..., :3] + (1 - out.alpha[..., None]) * self.background
        return rgb, out.features[..., 3:], out


def image_loss(rgb, seg, frame: Frame, weights: dict) -> torch.Tensor:
    l_img = 0.8 * (rgb - frame.rgb).abs().mean() + 0.2 * (1 - ssim(rgb, frame.rgb))
    l_seg = (seg - frame.seg).abs().sum(-1).mean()
    return weights["image"] * l_img + weights["seg"] * l_seg


def background_images(colour, ids) -> np.ndarray:
    """(C,H,W,3) uint8: per view, the median over frames of the pixels the masks call background; a pixel
    never background takes the median background colour of its view."""
    C = colour.shape[0]
    out = np.zeros(colour.shape[:1] + colour.shape[2:], np.uint8)
    for c in range(C):
        col = colour[c].astype(np.float32)
        bg = (ids[c] == 0)[..., None]
        masked = np.where(bg, col, np.nan)
        seen = bg[..., 0].any(axis=0)  # (H,W) background in some frame (nanmedian warns on the others)
        shown = masked[:, seen]                                # (T,P,3)
        med = np.full(col.shape[1:], np.nan, np.float32)
        med[seen] = np.nanmedian(shown, axis=0)
        fill = np.nanmedian(shown.reshape(-1, 3), axis=0) if seen.any() else np.full(3, 128.0)
        out[c] = np.where(np.isnan(med), fill, med).round().clip(0, 255).astype(np.uint8)
    return out


def masked_view_points(depth, ids, K, T_cw, stride: int = 1):
    """Per view, the (P,3) world points of the masked pixels with depth (every ``stride``-th pixel in x
    and y), their (P,) flat pixel indices and (P,) mask ids."""
    for c in range(len(K)):
        d = np.zeros_like(depth[c])
        d[::stride, ::stride] = depth[c][::stride, ::stride]
        p, flat = world_points(np.where(ids[c] > 0, d, 0), K[c], T_cw[c])
        yield p, flat, ids[c].ravel()[flat].astype(np.int64)


def mask_interior(ids: np.ndarray, margin: int) -> np.ndarray:
    """(C,H,W) mask ids with every pixel within ``margin`` pixels of a change of id (between objects, or
    object and background) set to 0."""
    if margin == 0:
        return ids
    size = 2 * margin + 1
    edge = np.stack([maximum_filter(v, size) != minimum_filter(v, size) for v in ids])
    return np.where(edge, 0, ids)


def initial_points(depth, ids, colour, K, T_cw, voxel: float, margin: int):
    """Masked depth of all views at one frame -> voxel-averaged (P,3) world points, (P,3) colours in [0, 1]
    and (P,) mask ids (the most common id of each voxel). Pixels within ``margin`` of a mask edge are left
    out: there the depth is the least sure (a silhouette's depth fattens, a seam's pixels mix two objects)
    and the mask's edge is a pixel either way, so Gaussians started there straddle objects (cube_stacks
    val_0000: the voxels' ids match the nearest true object for 0.959 of the points from all pixels,
    0.996 with a 1-pixel margin, 0.9997 with 2); the other views and densification cover the edges."""
    pts, cols, labs = [], [], []
    for c, (p, flat, lab) in enumerate(masked_view_points(depth, mask_interior(ids, margin), K, T_cw)):
        pts.append(p)
        cols.append(colour[c].reshape(-1, 3)[flat] / 255.0)
        labs.append(lab)
    if not sum(len(p) for p in pts):
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int64)
    p, col, lab = np.concatenate(pts), np.concatenate(cols), np.concatenate(labs)
    key = np.floor(p / voxel).astype(np.int64)
    _, vox = np.unique(key, axis=0, return_inverse=True)
    vox = vox.ravel()
    n = vox.max() + 1
    count = np.bincount(vox, minlength=n)[:, None]
    mean_p = np.stack([np.bincount(vox, p[:, i], n) for i in range(3)], 1) / count
    mean_c = np.stack([np.bincount(vox, col[:, i], n) for i in range(3)], 1) / count
    votes = np.zeros((n, lab.max() + 1), np.int64)
    np.add.at(votes, (vox, lab), 1)
    return mean_p, mean_c, votes.argmax(1)


def neighbours(means: np.ndarray, labels: np.ndarray, k: int, weight: float):
    """(N,k) indices of each Gaussian's k nearest Gaussians of the same label and (N,k) weights
    exp(-weight d^2) (0 where the label has fewer than k + 1 Gaussians)."""
    idx = np.tile(np.arange(len(means))[:, None], (1, k))
    w = np.zeros((len(means), k))
    for lab in np.unique(labels):
        members = np.flatnonzero(labels == lab)
        kk = min(k, len(members) - 1)
        if kk < 1:
            continue
        d, j = cKDTree(means[members]).query(means[members], kk + 1)
        idx[members, :kk] = members[j[:, 1:]]
        w[members, :kk] = np.exp(-weight * d[:, 1:] ** 2)
    return torch.from_numpy(idx), torch.from_numpy(w).float()


def quat_mul(a, b):
    """Hamilton product of (...,4) quaternions (x, y, z, w)."""
    ax, ay, az, aw = a.unbind(-1)
    bx, by, bz, bw = b.unbind(-1)
    return torch.stack([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz], -1)


def quat_conj(q):
    return q * q.new_tensor([-1.0, -1.0, -1.0, 1.0])


def ordered_sum(x: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """The sum of all elements of ``x``, added up in the same order at any thread count: torch splits a
    full reduction of 32768 elements or more into one partial sum per thread, so its rounding followed the
    thread count. Rows of ``block`` elements are summed (each by one thread), then their sums, and so on."""
    x = x.reshape(-1)
    while x.numel() > block:
        x = F.pad(x, (0, -x.numel() % block)).reshape(-1, block).sum(1)
    return x.sum()


def rigidity_loss(means, quats, prev_means, prev_quats, offsets0, nbr, w, weights: dict) -> torch.Tensor:
    """Dynamic 3D Gaussians' local rigidity, rotation similarity and isometry over neighbours ``nbr``."""
    q, pq = F.normalize(quats, dim=-1), F.normalize(prev_quats, dim=-1)
    rel = quat_mul(q, quat_conj(pq))                                  # rotation since the last frame
    R_rel = quat_to_rotmat(rel)
    off, prev_off = means[nbr] - means[:, None], prev_means[nbr] - prev_means[:, None]
    carried = torch.einsum("nij,nkj->nki", R_rel, prev_off)
    wsum = ordered_sum(w).clamp_min(1e-9)  # scales every gradient of these terms
    rigid = ((off - carried).norm(dim=-1) * w).sum() / wsum
    rot = ((rel[nbr] - rel[:, None]).norm(dim=-1) * w).sum() / wsum
    iso = ((off.norm(dim=-1) - offsets0).abs() * w).sum() / wsum
    return weights["rigid"] * rigid + weights["rot"] * rot + weights["iso"] * iso


def floor_loss(means, weights: dict) -> torch.Tensor:
    return weights["floor"] * torch.relu(-means[:, 2]).mean()


# -- first frame -----------------------------------------------------------------------------------

def fit_first_frame(g: Gaussians, views: Views, frame: Frame, n_ids: int, cfg: dict) -> dict:
    """Optimise all parameters of ``g`` against the first frame (in place); returns fit figures.

    The positions start on the masked depth and move slowly (``lr_means`` 2e-5 m a step): colour, opacity
    and scale explain the images as well either way (cube_stacks train_0001: PSNR within 0.1 dB of 10x the
    step), but faster positions carry Gaussians across the seams where objects touch, onto the
    neighbour's surface while keeping their label (share of Gaussians whose label is the nearest true
    object: 0.9997 at the start; after the fit 0.978 at 2e-4 m a step, 0.985 at 1e-4, 0.996 at 2e-5)."""
    fc = cfg["first_frame"]
    params = {"means": fc["lr_means"], "quats": fc["lr_quats"], "log_scales": fc["lr_scales"],
              "opacity_logits": fc["lr_opacities"], "colours": fc["lr_colours"]}

    def optimiser():
        for name in params:
            getattr(g, name).requires_grad_(True)
        return torch.optim.Adam([{"params": [getattr(g, n)], "lr": lr} for n, lr in params.items()])

    opt = optimiser()
    grad_acc = torch.zeros(len(g.means), device=g.means.device)
    steps = fc["iterations"]
    for it in tqdm(range(steps), desc="first frame", unit="it", file=sys.stderr, leave=False):
        rgb, seg, _ = views.render(g, g.means, g.quats, n_ids)
        loss = image_loss(rgb, seg, frame, cfg["weights"]) + floor_loss(g.means, cfg["weights"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        grad_acc += g.means.grad.norm(dim=-1).detach()
        if (it + 1) % fc["densify_every"] == 0 and it + 1 < fc["densify_until"] * steps:
            _prune_and_densify(g, grad_acc / fc["densify_every"], fc)
            opt, grad_acc = optimiser(), torch.zeros(len(g.means), device=g.means.device)
    keep = g.opacities.detach() > fc["prune_opacity"]
    g.select(keep)
    with torch.no_grad():
        rgb, seg, out = views.render(g, g.means, g.quats, n_ids)
        mse = ((rgb - frame.rgb) ** 2).mean(dim=(1, 2, 3))
    return {"psnr_db": (-10 * torch.log10(mse)).tolist(), "loss": float(loss.detach())}


def _prune_and_densify(g: Gaussians, grad: torch.Tensor, fc: dict) -> None:
    """Drop nearly transparent Gaussians; clone small ones and split large ones where the mean positional
    gradient is above ``densify_grad``."""
    with torch.no_grad():
        keep = g.opacities > fc["prune_opacity"]
        grad = grad[keep]
        g.select(keep)
        hot = grad > fc["densify_grad"]
        big = g.scales.max(dim=1).values > fc["split_scale_m"]
        split, clone = hot & big, hot & ~big
        # A split Gaussian becomes two, each displaced by a sample from it and 1.6x smaller.
        R = quat_to_rotmat(g.quats[split])
        offsets = torch.einsum("nij,nj->ni", R, torch.randn(int(split.sum()), 3, device=R.device) * g.scales[split])
        new = {"means": torch.cat([g.means[clone], g.means[split] + offsets]),
               "quats": torch.cat([g.quats[clone], g.quats[split]]),
               "log_scales": torch.cat([g.log_scales[clone], g.log_scales[split] - np.log(1.6)]),
               "opacity_logits": torch.cat([g.opacity_logits[clone], g.opacity_logits[split]]),
               "colours": torch.cat([g.colours[clone], g.colours[split]]),
               "labels": torch.cat([g.labels[clone], g.labels[split]])}
        g.log_scales[split] -= np.log(1.6)
        g.means[split] -= offsets
        g.append(**new)


# -- later frames ---------------------------------------------------------------------------------------

def _icp(model: cKDTree, target: np.ndarray, T: np.ndarray, radius: float, steps: int) -> np.ndarray:
    """Refine the (4,4) pose ``T`` of the ``model`` points (a tree) onto (P,3) ``target`` points: each target
    point pairs with the nearest posed model point within a radius shrinking from ``radius`` to a quarter
    (the target, a partial view, pairs into the whole model; solved as the target's pose in the model frame)."""
    return invert_T(icp(target, model, invert_T(T), np.geomspace(radius, radius / 4, steps)))


# Neighbours of a point's normal (``point_normals``): 12 span a few millimetres of the masked depth, small
# against a cube's face (on cube_stacks val_0000, 24 or 40 left the pre-alignment's rotation error larger).
NORMAL_NEIGHBOURS = 12


def _plane_pairs(model: np.ndarray, normals: np.ndarray, target: np.ndarray, target_normals: np.ndarray,
                 T: np.ndarray, radius: float, max_normal_deg: float):
    """Pairs of (P,3) ``target`` points with the nearest of the (M,3) ``model`` points posed at ``T`` within
    ``radius`` whose normals agree within ``max_normal_deg`` (normal signs are arbitrary). Returns the (P,)
    paired mask, the paired points' (Q,) residuals along the model normals, and the posed model points and
    normals (Q,3) they pair with."""
    x, n = transform_points(T, model), normals @ T[:3, :3].T
    dist, j = cKDTree(x).query(target, distance_upper_bound=radius)
    near = np.isfinite(dist)
    j = np.where(near, j, 0)
    near &= np.abs(np.einsum("ij,ij->i", n[j], target_normals)) >= np.cos(np.radians(max_normal_deg))
    xm, nm = x[j[near]], n[j[near]]
    return near, np.einsum("ij,ij->i", xm - target[near], nm), xm, nm


def _robust_spread(res: np.ndarray) -> float:
    """Robust standard deviation (1.4826 MAD about zero) of point-to-plane residuals, at least 0.5 mm."""
    return max(1.4826 * float(np.median(np.abs(res))), 5e-4)


def _icp_plane(model: np.ndarray, normals: np.ndarray, target: np.ndarray, target_normals: np.ndarray,
               T: np.ndarray, radius: float, steps: int, max_normal_deg: float, rotate: bool = True) -> np.ndarray:
    """Refine the (4,4) pose ``T`` of (M,3) ``model`` points with (M,3) ``normals`` onto (P,3) ``target``
    points with (P,3) ``target_normals``, point to plane: each target point pairs with the nearest posed
    model point within a radius shrinking from ``radius`` to a quarter whose normal agrees within
    ``max_normal_deg`` (a face the model lacks, seen once the object turns, would otherwise pair with the
    edge of a face it has and tilt it), and the pose step minimises the pairs' distances along the model
    normals (Gauss-Newton on a small rotation, Huber-weighted at twice the pairs' robust spread).
    Depth noise along a face averages out instead of pulling the faces' points together, so a box's
    rotation is held by its faces; the motion a surface leaves free (a pin's spin, sliding along a
    plane) is damped to stay where it was. ``rotate`` false fits the translation alone."""
    for r in np.geomspace(radius, radius / 4, steps):
        near, res, xm, nm = _plane_pairs(model, normals, target, target_normals, T, r, max_normal_deg)
        if near.sum() < 10:
            break
        J = np.concatenate([np.cross(xm, nm), nm], axis=1)  # d res / d (rotation vector, translation)
        if not rotate:
            J = J[:, 3:]
        w = 1.0 / np.maximum(1.0, np.abs(res) / (2 * _robust_spread(res)))
        H = (J * w[:, None]).T @ J
        H += 1e-4 * np.trace(H) / len(H) * np.eye(len(H))
        step = np.linalg.solve(H, -(J * w[:, None]).T @ res)
        rotvec = step[:3] if rotate else np.zeros(3)
        T = make_T(Rotation.from_rotvec(rotvec).as_matrix(), step[-3:]) @ T
    return T


def _plane_cost(near: np.ndarray, res: np.ndarray, radius: float, spread: float) -> float:
    """Huber cost (threshold 2, as ``_icp_plane`` weights), in units of ``spread``, of a pose's point-to-plane
    residuals ``res`` from ``_plane_pairs``; a target point without a pair (``near`` false) counts as one
    at the radius, so that a pose is not favoured for pairing fewer points."""
    a = np.concatenate([np.abs(res), np.full(int((~near).sum()), radius)]) / spread
    return float(np.where(a <= 2, 0.5 * a ** 2, 2 * a - 2).sum())


BALL_STIFFNESS = 0.035  # an object whose largest turn stiffness (turn_stiffness) is under this is a ball


def _turn_information(points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """For a point-to-plane registration of (P,3) ``points`` with (P,3) ``normals``: the (3,3) information
    matrix of a turn (rotation vector) about the points' centroid with the shift eliminated, the (3,3) map
    from such a turn to the shift that best goes with it, and the points' summed squared distance from the
    centroid (m^2)."""
    p = points - points.mean(0)
    J = np.concatenate([np.cross(p, normals), normals], axis=1)
    H = J.T @ J
    shift_of_turn = -np.linalg.solve(H[3:, 3:], H[3:, :3])
    return H[:3, :3] + H[:3, 3:] @ shift_of_turn, shift_of_turn, max(float((p ** 2).sum()), 1e-12)


def turn_stiffness(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(3,) ascending: how firmly a point-to-plane registration of (P,3) ``points`` with (P,3) ``normals``
    holds the object's turns once its shift is free (eigenvalues of the information matrix of the turn
    about the centroid, the shift eliminated), in units of the points' summed squared distance from the
    centroid. Near 0 for a turn that moves every point along its surface: a ball's three (the largest
    0.012-0.014 on the bowling ball's first-frame depth, with its noisy normals), a pin's spin. The largest
    of a pin's are 0.25-0.39 and of a cube's 0.09-0.30 (first frames of both scenes' episodes)."""
    turn, _, scale = _turn_information(points, normals)
    return np.linalg.eigvalsh(turn) / scale


# A solid of revolution: its weakest turn (the spin about its axis) at most a fifth as stiff as the next. The
# first-frame Gaussians of the bowling pins: 7.8-19 times (all four episodes); of the cubes at most 1.8 times,
# of the ball 1.1-1.3.
SPIN_RATIO = 5.0


def weakest_turn(points: np.ndarray, normals: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """How much stiffer the second weakest turn of (P,3) ``points`` with (P,3) ``normals`` is than the
    weakest (``turn_stiffness``), and the weakest turn's axis: its (3,) unit direction and (3,) a point on
    it (the weakest turn with the shift that goes with it is a rotation about that line). For a pin's
    first-frame Gaussians the axis lies within 0.4-4.1 degrees and 0.3-2.1 mm of its axis of symmetry."""
    turn, shift_of_turn, _ = _turn_information(points, normals)
    stiffness, directions = np.linalg.eigh(turn)
    direction = directions[:, 0]
    return float(stiffness[1] / max(stiffness[0], 1e-12)), direction, \
        points.mean(0) + np.cross(direction, shift_of_turn @ direction)


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(3,) centre and radius (m) of the sphere through (P,3) ``points`` (linear least squares on
    |p|^2 = 2 p.c + r^2 - |c|^2). The centroid of a ball's seen points lies off its centre, toward the
    cameras."""
    A = np.concatenate([2 * points, np.ones((len(points), 1))], axis=1)
    x = np.linalg.lstsq(A, (points ** 2).sum(1), rcond=None)[0]
    return x[:3], float(np.sqrt(max(x[3] + x[:3] @ x[:3], 0.0)))


def roll(pose: np.ndarray, last: np.ndarray, predicted: np.ndarray, centre0: np.ndarray, radius: float,
         gap: float) -> np.ndarray:
    """The (4,4) pose of a ball whose registered ``pose`` fixes only its centre (``centre0`` at frame 0,
    world, m): turned from its ``last`` pose as if rolling without slipping on the table (z = 0) along the
    centre's shift, where the centre is at most ``gap`` above its ``radius``; off the table, with the turn of
    the constant-velocity ``predicted`` pose."""
    centre = transform_points(pose, centre0[None])[0]
    if centre[2] <= radius + gap:
        shift = centre - transform_points(last, centre0[None])[0]
        R = Rotation.from_rotvec(np.cross([0.0, 0.0, 1.0], shift) / radius).as_matrix() @ last[:3, :3]
    else:
        R = predicted[:3, :3]
    return make_T(R, centre - R @ centre0)


def swing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3,3) the smallest rotation taking unit vector ``a`` to unit vector ``b`` (about a x b; a half turn
    about a perpendicular where they are opposite)."""
    axis = np.cross(a, b)
    sin, cos = float(np.linalg.norm(axis)), float(np.clip(a @ b, -1.0, 1.0))
    if sin < 1e-12:
        return np.eye(3) if cos > 0 else Rotation.from_rotvec(np.pi * perpendicular_basis(a)[0]).as_matrix()
    return Rotation.from_rotvec(axis / sin * np.arctan2(sin, cos)).as_matrix()


def without_spin(pose: np.ndarray, last: np.ndarray, axis: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The (4,4) ``pose`` of a solid of revolution (its axis through ``point`` along unit ``axis`` at frame 0)
    with its spin since the ``last`` pose taken out: the axis lies where ``pose`` puts it, and the turn from
    ``last`` is the smallest that carries the axis there. Neither depth nor these images show the spin,
    and carried on at constant velocity it ran away (a struck pin of bowling train_0001 registered turning
    up to 166 degrees a frame, in truth never over 48)."""
    R = swing(last[:3, :3] @ axis, pose[:3, :3] @ axis) @ last[:3, :3]
    return make_T(R, transform_points(pose, point[None])[0] - R @ point)


BOX_SHARE = 0.4  # an object is a box where this share of its normals lie within 15 degrees of three axes


def box_axes(normals: np.ndarray, tol_deg: float = 15.0) -> np.ndarray | None:
    """(3,3) rows: three orthogonal face normals of a box from the (P,3) ``normals`` of its points (sign
    arbitrary), or None where fewer than ``BOX_SHARE`` of the normals lie within ``tol_deg`` of them. The
    first axis is the direction most normals gather about, the second the same among the normals
    perpendicular to it. On the first frames, a cube's share is 0.44-0.66 and a pin's 0.15-0.25."""
    n = normals[:: max(1, len(normals) // 800)]
    cos, sin = np.cos(np.radians(tol_deg)), np.sin(np.radians(tol_deg))
    close = np.abs(n @ n.T) > cos

    def gathered(i: int, among: np.ndarray) -> np.ndarray:
        m = close[i] & among
        v = (n[m] * np.sign(n[m] @ n[i])[:, None]).mean(0)
        return v / np.linalg.norm(v)

    first = gathered(int(close.sum(1).argmax()), np.ones(len(n), bool))
    perp = np.abs(n @ first) < sin
    if perp.sum() < 10:
        return None
    second = gathered(int(np.flatnonzero(perp)[close[np.ix_(perp, perp)].sum(1).argmax()]), perp)
    second = second - (second @ first) * first
    second = second / np.linalg.norm(second)
    axes = np.stack([first, second, np.cross(first, second)])
    return axes if (np.abs(n @ axes.T) > cos).any(1).mean() >= BOX_SHARE else None


def lay_flat(pose: np.ndarray, model: np.ndarray, axes: np.ndarray, max_deg: float, gap: float) -> np.ndarray:
    """The (4,4) ``pose`` of a box (``model`` (P,3) points and (3,3) face-normal ``axes`` at frame 0) turned
    about its points' centroid so that the face normal nearest the vertical is vertical, where that is
    within ``max_deg`` and the posed points come within ``gap`` of the table: a box on the table lies flat
    on it."""
    x = transform_points(pose, model)
    if x[:, 2].min() > gap:
        return pose
    up = axes @ pose[:3, :3].T
    d = up[int(np.abs(up[:, 2]).argmax())]
    d = d * np.sign(d[2])
    tilt = float(np.arccos(np.clip(d[2], -1.0, 1.0)))
    if np.degrees(tilt) > max_deg or tilt < 1e-6:  # flat already (to rounding)
        return pose
    R = Rotation.from_rotvec(np.cross(d, [0.0, 0.0, 1.0]) / np.sin(tilt) * tilt).as_matrix()
    c = x.mean(0)
    return make_T(R, c - R @ c) @ pose


class ObjectPoses:
    """Rigid poses of the objects from their masked depth, for the start of every frame.

    Each object's model is its masked depth points at the first frame (mask id = object). A frame's pose is
    found by ICP of the model onto the frame's points of the same mask id, from a constant-velocity
    prediction and from that prediction shifted to the points' centroid (a fast start outruns the first);
    both are refined point to plane (``_icp_plane``; on cube_stacks val_0000 the median rotation error of
    these poses drops from 10.8 to 4.1 degrees) and the refined pose that explains the points best is kept
    (``_best_refined``; chosen before the refinement by the point-to-point residual, a pin rolling out of
    two views of bowling train_0001 was registered 19 mm off and lost). An object with too
    few points this frame (a fragment at the workspace's edge or behind another) keeps its constant-velocity
    prediction. Registering depth to depth, both seen by the same cameras, keeps the biases of depth and
    masks out of the relative motion.

    The refined pose is taken only where it explains the frame's points better than both the last pose
    (at rest) and the constant-velocity prediction by more than ``prealign_hold`` (the difference of their
    Huber costs in units of the residuals' squared robust spread: a likelihood-ratio test of the six fitted
    parameters against a model with none); otherwise the better of those two stands. The registration of
    stereo depth jitters by degrees from frame to frame (cube_stacks val_0000: a cube turning 0.9 degrees
    in all was registered 2-7 degrees off), and the constant-velocity prediction would carry each jitter
    on as a motion; an object at rest stays put, a slow motion is followed once it adds up to more than
    the jitter, and an object whose points thin out as it leaves the views (too few to tell) keeps its
    velocity instead of being stopped.

    Where the refined pose passes that test for an object that was not turning (its last motion turned it
    by under ``prealign_shift_turn_deg``) and turns it only a little (``prealign_shift_max_deg``), the shift
    alone is fitted (the better prior's rotation, translated point to plane) and taken unless the refined
    pose's cost is lower by more than ``prealign_shift_hold``: a cube pushed across the table is registered
    with a rotation jitter of degrees that the shift leaves out (cube_stacks labels' median rotation error
    1.74 / 2.21 / 2.82 / 1.66 -> 1.33 / 1.96 / 2.19 / 1.72 degrees on train_0000 / train_0001 / val_0000 /
    test_0000); offered to every object instead, a tumbling cube's turn is taken late.

    A ball's depth fixes its centre and none of its turns (``turn_stiffness``); its refined pose keeps the
    registered centre of the sphere fitted to its first-frame points and is turned by ``roll``: rolling
    without slipping along the centre's shift while it is on the table (``prealign_roll``). The bowling
    ball turns 14-74 degrees a frame, which the photometric steps never found (labels 56-179 degrees off
    on test_0000; rolled, 0-9).

    A solid of revolution (its first-frame Gaussians' weakest turn ``SPIN_RATIO`` times weaker than the
    next, ``weakest_turn``: the pins) keeps the axis its refined pose gives it and turns no more than it takes
    to carry the axis there (``without_spin``, ``prealign_spin``): depth and images do not show its spin, and
    the constant-velocity prediction carried every registered jitter of it on (bowling labels' median
    rotation error on train_0000 / train_0001: 23.0 / 6.7 degrees with it, 13.4 / 4.4 without).

    A box (``box_axes``) on the table is laid flat (``lay_flat``, ``prealign_flat``): stereo depth tilts a
    box's registration by a degree or two (most of the cubes' rotation error, cube_stacks val_0000:
    1.44 of 2.26 degrees), and a box at rest or sliding on the table lies on a face; one leaning by more
    than ``prealign_flat_deg`` is left as registered."""

    def __init__(self, first: dict[int, np.ndarray], cfg: dict, gaussians: dict[int, np.ndarray] | None = None):
        self.models = {k: v for k, v in first.items() if len(v) >= 20}
        self.normals = {k: point_normals(v, NORMAL_NEIGHBOURS) for k, v in self.models.items()}
        self.trees = {k: cKDTree(v) for k, v in self.models.items()}
        self.poses = {k: np.eye(4) for k in self.models}
        self.velocity = {k: np.eye(4) for k in self.models}
        self.cfg = cfg
        # Balls, {id: (centre at frame 0, radius)}: their depth fixes no turn (all three stiffnesses small).
        self.balls = {k: fit_sphere(v) for k, v in self.models.items()
                      if cfg["prealign_roll"] and turn_stiffness(v, self.normals[k])[-1] < BALL_STIFFNESS}
        # Solids of revolution, {id: ((3,) axis direction, (3,) point on it) at frame 0}, from the first-frame
        # Gaussians (their fitted surface; the masked depth's noisy normals hide a pin's weak spin): their spin
        # is not tracked (``without_spin``).
        self.spins = {}
        for k, v in (gaussians or {}).items() if cfg["prealign_spin"] else ():
            if k in self.models and k not in self.balls and len(v) >= 20:
                ratio, axis, point = weakest_turn(v, point_normals(v, NORMAL_NEIGHBOURS))
                if ratio >= SPIN_RATIO:
                    self.spins[k] = (axis, point)
        # Boxes, {id: (3,3) face normals at frame 0}: on the table they lie flat (``lay_flat``). Where the first
        # frame's box is on the table and nearly flat, its axes are taken as lying flat too.
        self.boxes = {}
        for k, v in self.models.items() if cfg["prealign_flat"] else ():
            axes = None if k in self.balls else box_axes(self.normals[k])
            if axes is not None:
                flat = lay_flat(np.eye(4), v, axes, cfg["prealign_flat_deg"], cfg["prealign_flat_gap_m"])
                self.boxes[k] = axes @ flat[:3, :3].T

    def step(self, targets: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Move to the next frame; returns {id: (4,4) motion since the last frame} of the objects seen."""
        moved = {}
        for k, model in self.models.items():
            predicted = self.velocity[k] @ self.poses[k]
            target = targets.get(k)
            if target is None or len(target) < max(20, self.cfg["prealign_min_share"] * len(model)):
                pose = predicted  # unseen, or a fragment whose fit would jump
            else:
                shift = np.eye(4)
                shift[:3, 3] = target.mean(0) - transform_points(predicted, model).mean(0)
                fits = [_icp(self.trees[k], target, start, self.cfg["prealign_radius_m"],
                             self.cfg["prealign_iterations"]) for start in (predicted, shift @ predicted)]
                target_normals = point_normals(target, NORMAL_NEIGHBOURS)
                pose = self._best_refined(k, target, target_normals, fits)
                pose = self._settle(k, target, target_normals, pose, predicted)
                if k in self.balls and not np.array_equal(pose, self.poses[k]):
                    pose = roll(pose, self.poses[k], predicted, *self.balls[k], self.cfg["prealign_roll_gap_m"])
                if k in self.spins and not np.array_equal(pose, self.poses[k]):
                    pose = without_spin(pose, self.poses[k], *self.spins[k])
                if k in self.boxes:
                    pose = lay_flat(pose, model, self.boxes[k], self.cfg["prealign_flat_deg"],
                                    self.cfg["prealign_flat_gap_m"])
            moved[k] = pose @ invert_T(self.poses[k])
            self.velocity[k], self.poses[k] = moved[k], pose
        return moved

    def _best_refined(self, k: int, target: np.ndarray, target_normals: np.ndarray, starts: list) -> np.ndarray:
        """Object ``k``'s pose refined point to plane (``_icp_plane``) from each of ``starts``, the one whose
        refined pose explains the frame's points best (``_plane_cost`` at a quarter of the refinement's radius,
        in units of the residual spread of the one that pairs most points; the first where none pairs 10).
        The point-to-point fits that give the starts fit a turned object's points about as well from poses
        10-20 mm apart, where its first-frame model no longer matches what it shows (bowling train_0001, a
        pin rolling out of two views)."""
        refined = [_icp_plane(self.models[k], self.normals[k], target, target_normals, T,
                              self.cfg["prealign_plane_radius_m"], self.cfg["prealign_iterations"],
                              self.cfg["prealign_normal_deg"]) for T in starts]
        radius = self.cfg["prealign_plane_radius_m"] / 4
        pairs = [_plane_pairs(self.models[k], self.normals[k], target, target_normals, T, radius,
                              self.cfg["prealign_normal_deg"])[:2] for T in refined]
        most = max(pairs, key=lambda p: int(p[0].sum()))
        if most[0].sum() < 10:
            return refined[0]
        spread = _robust_spread(most[1])
        return refined[int(np.argmin([_plane_cost(*p, radius, spread) for p in pairs]))]

    def _settle(self, k: int, target: np.ndarray, target_normals: np.ndarray, refined: np.ndarray,
                predicted: np.ndarray) -> np.ndarray:
        """Object ``k``'s pose this frame: ``refined`` where the frame's points support it over both the last
        pose (at rest) and the constant-velocity ``predicted`` one, else the better of those two; for an
        object that was not turning, the refined pose's shift alone where its turn adds too little (see the
        class)."""
        if self.cfg["prealign_hold"] == 0:
            return refined
        radius = self.cfg["prealign_plane_radius_m"] / 4

        def pairs_at(T):
            return _plane_pairs(self.models[k], self.normals[k], target, target_normals, T, radius,
                                self.cfg["prealign_normal_deg"])[:2]

        pairs = {name: pairs_at(T) for name, T in (("rest", self.poses[k]), ("velocity", predicted),
                                                   ("refined", refined))}
        near, res = pairs["refined"]
        if near.sum() < 10:
            return refined
        spread = _robust_spread(res)
        cost = {name: _plane_cost(*pair, radius, spread) for name, pair in pairs.items()}
        prior = min(("velocity", "rest"), key=cost.get)  # a tie (points that cannot tell) keeps the motion
        base = self.poses[k] if prior == "rest" else predicted
        if cost[prior] - cost["refined"] <= self.cfg["prealign_hold"]:
            return base
        if rotation_angle_deg(self.velocity[k][:3, :3], np.eye(3)) >= self.cfg["prealign_shift_turn_deg"] \
                or rotation_angle_deg(refined[:3, :3], base[:3, :3]) > self.cfg["prealign_shift_max_deg"]:
            return refined
        # An object that was not turning and whose refined pose turns it only a little: the shift alone,
        # unless the turn explains the points by far more than the hold (a jitter of the registration's
        # rotation would otherwise be taken whenever the object slides). It starts with its centroid where the
        # refined pose puts it, so half the refinement's radius and four steps suffice.
        centroid = self.models[k].mean(0)[None]
        shifted = base.copy()
        shifted[:3, 3] += transform_points(refined, centroid)[0] - transform_points(base, centroid)[0]
        shifted = _icp_plane(self.models[k], self.normals[k], target, target_normals, shifted,
                             self.cfg["prealign_plane_radius_m"] / 2, 4, self.cfg["prealign_normal_deg"],
                             rotate=False)
        if _plane_cost(*pairs_at(shifted), radius, spread) - cost["refined"] > self.cfg["prealign_shift_hold"]:
            return refined
        return shifted


def apply_motion(means: torch.Tensor, quats: torch.Tensor, labels: torch.Tensor, motion: dict[int, np.ndarray]):
    """Move each label's Gaussians (positions and rotations) by its (4,4) rigid motion."""
    means, quats = means.clone(), quats.clone()
    for k, M in motion.items():
        sel = labels == k
        M = M.astype(np.float32)  # the motion as the Gaussians carry it
        q = torch.from_numpy(Rotation.from_matrix(M[:3, :3].astype(np.float64)).as_quat()).float().to(means.device)
        M = torch.from_numpy(M).to(means.device)
        means[sel] = means[sel] @ M[:3, :3].T + M[:3, 3]
        quats[sel] = quat_mul(q.expand_as(quats[sel]), quats[sel])
    return means, quats


def frame_start(means: np.ndarray, quats: np.ndarray, labels: torch.Tensor, motion: dict[int, np.ndarray]):
    """Where frame t's optimisation starts, from the (t,N,3) means and (t,N,4) quaternions of the frames
    before it: a constant-velocity prediction (as Dynamic 3D Gaussians), replaced for the objects in
    ``motion`` by their rigid motion since the last frame applied to their last state."""
    device = labels.device
    prev_m, prev_q = torch.from_numpy(means[-1]).to(device), torch.from_numpy(quats[-1]).to(device)
    if len(means) >= 2:
        m = 2 * prev_m - torch.from_numpy(means[-2]).to(device)
        q = F.normalize(2 * prev_q - torch.from_numpy(quats[-2]).to(device), dim=-1)
    else:
        m, q = prev_m.clone(), prev_q.clone()
    if motion:
        moved_m, moved_q = apply_motion(prev_m, prev_q, labels, motion)
        sel = torch.isin(labels, torch.tensor(list(motion), device=device))
        m[sel], q[sel] = moved_m[sel], moved_q[sel]
    return m, q


def masked_points(depth, ids, K, T_cw, stride: int) -> dict[int, np.ndarray]:
    """{mask id: (P,3) world points of its pixels in all views}, every ``stride``-th pixel."""
    out: dict[int, list] = {}
    for p, _, lab in masked_view_points(depth, ids, K, T_cw, stride):
        for k in np.unique(lab):
            out.setdefault(int(k), []).append(p[lab == k])
    return {k: np.concatenate(v) for k, v in out.items()}


def track_frame(g: Gaussians, views: Views, frame: Frame, n_ids: int, means, quats, prev_means, prev_quats,
                offsets0, nbr, w, cfg: dict):
    """Optimise positions and rotations of one frame from the given start; returns them and the last loss."""
    means = means.clone().requires_grad_(True)
    quats = quats.clone().requires_grad_(True)
    tc = cfg["track"]
    opt = torch.optim.Adam([{"params": [means], "lr": tc["lr_means"]}, {"params": [quats], "lr": tc["lr_quats"]}])
    weights = cfg["weights"]
    for _ in range(tc["iterations"]):
        rgb, seg, _ = views.render(g, means, quats, n_ids)
        loss = image_loss(rgb, seg, frame, weights) + floor_loss(means, weights) + \
            rigidity_loss(means, quats, prev_means, prev_quats, offsets0, nbr, w, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return means.detach(), F.normalize(quats.detach(), dim=-1), float(loss.detach())


@contextlib.contextmanager
def deterministic_torch():
    """Torch's deterministic algorithms for the duration: on CPU the backward pass of a gather with
    repeated indices (the renderer's per-tile lists, the neighbour terms) otherwise adds up in thread
    order, so a fit differed bitwise between runs and thread counts (7366 against 7374 Gaussians kept)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def tracking_device(name: str) -> torch.device:
    """The device of config key ``tracking/device``: auto (CUDA when torch sees a GPU), cpu or cuda."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrackingError("config key 'tracking/device': cuda, but torch sees no CUDA device")
    return torch.device(name)


def write_tracking(capture_path: str, depth_path: str, masks_path: str, calibration_path: str, cfg: dict,
                   out: str) -> dict:
    """The stage on ``tracking/device``. On the CPU it runs with torch's deterministic algorithms; on CUDA
    it does not: gsplat's backward adds up with atomics anyway, and torch's deterministic mode stops at the
    first CUDA op that has no deterministic kernel."""
    device = tracking_device(cfg["device"])
    with deterministic_torch() if device.type == "cpu" else contextlib.nullcontext():
        return _write_tracking(capture_path, depth_path, masks_path, calibration_path, cfg, out, device)


def _write_tracking(capture_path: str, depth_path: str, masks_path: str, calibration_path: str, cfg: dict,
                    out: str, device: torch.device) -> dict:
    capture = open_artifact(capture_path, "capture")
    depth_art = open_artifact(depth_path, "depth")
    masks = open_artifact(masks_path, "masks")
    cal = open_artifact(calibration_path, "calibration")
    same_cameras(TrackingError, (masks_path, masks), (capture_path, capture), (depth_path, depth_art),
                 (calibration_path, cal))
    C, T, H, W = masks["ids"].shape
    for path, arr in ((capture_path, capture["color"]), (depth_path, depth_art["depth"])):
        if arr.shape[:4] != (C, T, H, W):
            raise TrackingError(f"{path}: frames {arr.shape[:4]} do not match the masks {(C, T, H, W)} of {masks_path}")
    torch.manual_seed(cfg["seed"])
    colour, ids = capture["color"][:], masks["ids"][:]
    K, T_cw = depth_art["K"][:], cal["T_cw_color"][:]
    n_ids = int(ids.max())
    if n_ids == 0:
        raise TrackingError(f"{masks_path}: no object in any mask; nothing to track")
    try:
        views = Views(K, T_cw, background_images(colour, ids), cfg["backend"], device)
    except ValueError as e:  # gsplat asked for on the CPU
        raise TrackingError(f"config key 'tracking/backend': {e}") from None
    depth0 = depth_art["depth"][:, 0]
    points, cols, labels = initial_points(depth0, ids[:, 0], colour[:, 0], K, T_cw, cfg["init_voxel_m"],
                                          cfg["init_margin_px"])
    if len(points) < 10:
        raise TrackingError(f"{masks_path}: frame 0 has {len(points)} masked pixels with depth in "
                            f"{depth_path}; need at least 10 to start Gaussians")
    spacing = cKDTree(points).query(points, 4)[0][:, 1:].mean(1).clip(cfg["init_voxel_m"] / 4, cfg["init_voxel_m"])
    g = Gaussians(points, cols, labels, spacing / 2, device)
    fit = fit_first_frame(g, views, Frame(colour[:, 0], ids[:, 0], n_ids, device), n_ids, cfg)
    N = len(g.means)
    means0 = g.means.detach().cpu().numpy()
    nbr, w = neighbours(means0, g.labels.cpu().numpy(), cfg["neighbours"], cfg["neighbour_weight"])
    nbr, w = nbr.to(device), w.to(device)
    offsets0 = (g.means[nbr] - g.means[:, None]).norm(dim=-1).detach()
    traj_means = np.zeros((T, N, 3), np.float32)
    traj_quats = np.zeros((T, N, 4), np.float32)
    traj_means[0], traj_quats[0] = means0, F.normalize(g.quats.detach(), dim=-1).cpu().numpy()
    losses = np.zeros(T)
    losses[0] = fit["loss"]
    attrs = {k: masks.attrs[k] for k in ("scene", "episode", "split", "camera_names")}
    method = "dyn3dgs+prealign" if cfg["prealign"] else "dyn3dgs"
    labels0 = g.labels.cpu().numpy()
    poses = ObjectPoses(masked_points(depth0, ids[:, 0], K, T_cw, cfg["prealign_stride"]), cfg,
                        {int(k): means0[labels0 == k].astype(np.float64) for k in np.unique(labels0[labels0 > 0])}) \
        if cfg["prealign"] else None
    with ArtifactWriter(out, "tracking", "tracking", cfg, **attrs, method=method, renderer=views.backend,
                        device=device.type, source_capture=str(capture_path), source_depth=str(depth_path),
                        source_masks=str(masks_path), source_calibration=str(calibration_path)) as art:
        for t in tqdm(range(1, T), desc="tracking", unit="frame", file=sys.stderr):
            prev_m, prev_q = (torch.from_numpy(x[t - 1]).to(device) for x in (traj_means, traj_quats))
            motion = poses.step(masked_points(depth_art["depth"][:, t], ids[:, t], K, T_cw, cfg["prealign_stride"])) \
                if poses is not None else {}
            m, q = frame_start(traj_means[:t], traj_quats[:t], g.labels, motion)
            m, q, losses[t] = track_frame(g, views, Frame(colour[:, t], ids[:, t], n_ids, device), n_ids, m, q,
                                          prev_m, prev_q, offsets0, nbr, w, cfg)
            traj_means[t], traj_quats[t] = m.cpu().numpy(), q.cpu().numpy()
        put(art, "means", traj_means, {"shape": "(T, N, 3)", "unit": "m", "frame": "world"})
        put(art, "quats", traj_quats, {"shape": "(T, N, 4)", "convention": "(x, y, z, w), object to world"})
        put(art, "scales", g.scales.detach().cpu().numpy(), {"unit": "m", "note": "standard deviations"})
        put(art, "opacities", g.opacities.detach().cpu().numpy())
        put(art, "colours", g.colours.detach().clamp(0, 1).cpu().numpy(), {"range": "[0, 1] RGB"})
        put(art, "mask_labels", g.labels.cpu().numpy(), {"note": "first-frame mask id each Gaussian was fitted with"})
        put(art, "background", views.background.mul(255).round().byte().cpu().numpy(), {"shape": "(C, H, W, 3)"})
        put(art, "loss", losses)
        put(art, "K", K, {"note": "colour cameras the Gaussians were fitted in"})
        put(art, "T_cw", T_cw, {"maps": "world -> colour camera"})
        art.attrs["first_frame_psnr_db"] = fit["psnr_db"]
        art.attrs["n_gaussians"] = N
    return {"n_gaussians": N, "psnr_db": fit["psnr_db"], "final_loss": float(losses[-1])}


def main(argv=None) -> int:
    def run(args, cfg):
        result = write_tracking(args.capture, args.depth, args.masks, args.calibration, cfg, args.out)
        return f"{result['n_gaussians']} Gaussians; first-frame PSNR {np.round(result['psnr_db'], 1).tolist()} dB"

    return stage_main(argv, "tracking", __doc__,
                      {"capture": "capture artifact of the episode (colour images)",
                       "depth": "depth artifact of the episode", "masks": "masks artifact of the episode",
                       "calibration": "calibration artifact of the rig"},
                      (TrackingError,), run)


if __name__ == "__main__":
    sys.exit(main())
