"""Rigid transforms and pinhole cameras.

Conventions (every stage uses these):
- World frame: metres, z up, the table plane at z = 0.
- Cameras: OpenCV convention (x right, y down, z forward); extrinsics are 4x4 world-to-camera
  matrices ``T_cw`` so that ``x_cam = T_cw @ x_world``. Pixel centres sit at integer coordinates.
- Quaternions are (x, y, z, w), as pybullet and scipy write them.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(3,3) rotation and (3,) translation -> (4,4) homogeneous transform."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def invert_T(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (..., 4, 4) transform."""
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Ti = np.zeros_like(T)
    Ti[..., :3, :3] = np.swapaxes(R, -1, -2)
    Ti[..., :3, 3] = -np.einsum("...ji,...j->...i", R, t)
    Ti[..., 3, 3] = 1.0
    return Ti


def transform_points(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Apply a (4,4) transform to (N,3) points."""
    return p @ T[:3, :3].T + T[:3, 3]


def kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising |R src + t - dst| over matched (N,3) point pairs."""
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    U, _, Vt = np.linalg.svd((src - cs).T @ (dst - cd))
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    R = Vt.T @ S @ U.T
    return R, cd - R @ cs


def point_to_plane(src: np.ndarray, normals: np.ndarray, dst: np.ndarray,
                   point_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t that move (N,3) points ``src`` with (N,3) unit ``normals`` so that each
    lies on the plane through its paired (N,3) ``dst`` point: one Gauss-Newton step of sum(((R src + t -
    dst) . R n)^2), linearised in a small rotation about the points' centroid. Unlike the point-to-point
    fit (``kabsch``), a pair's offset along the surface costs nothing: where the targets cover a part of the
    surface the source lacks (or the other way round), they pair with the source's edge without dragging it
    sideways. ``point_weight`` > 0 adds the point-to-point residuals at that weight, which holds the
    directions the planes leave free (a cylinder's spin and slide) and damps the step."""
    centre = src.mean(axis=0)
    a = src - centre
    A = np.hstack([np.cross(a, normals), normals])
    b = np.einsum("ij,ij->i", dst - src, normals)
    if point_weight:
        turn = np.cross(np.eye(3)[None], a[:, None]).transpose(0, 2, 1)  # d(w x a)/dw: column j is e_j x a
        P = np.concatenate([turn, np.broadcast_to(np.eye(3), turn.shape)], axis=2).reshape(-1, 6)
        A = np.vstack([A, point_weight * P])
        b = np.concatenate([b, point_weight * (dst - src).ravel()])
    x = np.linalg.lstsq(A, b, rcond=1e-6)[0]
    R = Rotation.from_rotvec(x[:3]).as_matrix()
    return R, centre + x[3:] - R @ centre


def perpendicular_basis(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two (3,) unit vectors u, v that make (u, v, axis) a right-handed orthonormal basis with the (3,) unit
    ``axis`` (u across the world axis x, or y where the axis lies near x)."""
    u = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    return u, np.cross(axis, u)


def icp(points: np.ndarray, target, T: np.ndarray, radii) -> np.ndarray:
    """Point-to-point ICP: refine the (4,4) pose ``T`` of (N,3) ``points`` onto the points of ``target`` (a
    scipy ``cKDTree``, built once by the caller). Step i pairs each posed point with its nearest target point
    within ``radii[i]`` metres (a shrinking schedule ignores what lies far off once the pose is close) and
    moves the pose by the pairs' Kabsch fit; it stops early when fewer than 10 points pair."""
    for radius in radii:
        posed = transform_points(T, points)
        dist, j = target.query(posed, distance_upper_bound=radius)
        near = np.isfinite(dist)
        if near.sum() < 10:
            break
        R, t = kabsch(posed[near], target.data[j[near]])
        T = make_T(R, t) @ T
    return T


def point_normals(points: np.ndarray, k: int) -> np.ndarray:
    """(N,3) unit normals (sign arbitrary) of (N,3) points: the axis of least spread of each point's k
    nearest neighbours (itself included)."""
    _, j = cKDTree(points).query(points, min(k, len(points)))
    nb = points[j] - points[j].mean(axis=1, keepdims=True)
    return np.linalg.eigh(np.einsum("nki,nkj->nij", nb, nb))[1][:, :, 0]


def transform_gaussians(means: np.ndarray, quats: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,3) Gaussian centres and (N,4) rotations (x, y, z, w) moved by a rigid (4,4) transform (float64)."""
    moved = transform_points(T, np.asarray(means, np.float64))
    return moved, (Rotation.from_matrix(T[:3, :3]) * Rotation.from_quat(quats)).as_quat()


def quat_to_matrix(q_xyzw) -> np.ndarray:
    return Rotation.from_quat(np.asarray(q_xyzw, dtype=float)).as_matrix()


def pose_to_T(position, q_xyzw) -> np.ndarray:
    return make_T(quat_to_matrix(q_xyzw), np.asarray(position, dtype=float))


def look_at_T_cw(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera (4,4) for an OpenCV camera at ``eye`` looking at ``target``.

    Image x points right and y down as seen with ``up`` pointing up in the world.
    """
    eye = np.asarray(eye, dtype=float)
    z = np.asarray(target, dtype=float) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=float))
    if np.linalg.norm(x) < 1e-9:
        raise ValueError(f"camera at {eye.tolist()} looks along the up vector; choose another target")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R_wc = np.stack([x, y, z], axis=1)  # columns: camera axes in world
    return invert_T(make_T(R_wc, eye))


def intrinsics_from_hfov(width: int, height: int, hfov_rad: float) -> np.ndarray:
    """(3,3) K with square pixels and the principal point at the image centre."""
    f = (width / 2.0) / np.tan(hfov_rad / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def pixel_rays(K: np.ndarray, width: int, height: int, offset=(0.0, 0.0)) -> np.ndarray:
    """(H*W,3) camera-frame ray directions with z = 1, one per pixel (row-major).

    ``offset`` shifts the sample inside the pixel (in pixels), for supersampling.
    """
    u, v = np.meshgrid(np.arange(width) + offset[0], np.arange(height) + offset[1])
    x = (u.ravel() - K[0, 2]) / K[0, 0]
    y = (v.ravel() - K[1, 2]) / K[1, 1]
    return np.stack([x, y, np.ones_like(x)], axis=1)


def project(K: np.ndarray, T_cw: np.ndarray, p_world: np.ndarray):
    """Project (N,3) world points; returns (N,2) pixel coordinates and (N,) camera-frame depth z."""
    pc = transform_points(T_cw, p_world)
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (pc[:, :2] / z[:, None]) * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
    return uv, z


def backproject(K: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(H,W) z-depth in metres -> (H,W,3) camera-frame points."""
    h, w = depth.shape
    rays = pixel_rays(K, w, h).reshape(h, w, 3)
    return rays * depth[..., None]


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of R_a^T R_b in degrees."""
    c = (np.trace(R_a.T @ R_b) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))
