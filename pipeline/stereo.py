"""Stereo matching of a rectified pair, rectification of an infrared pair, and depth registration.

Images are (H, W) uint8; disparities are float32 pixels (left image), -1 where there is none; depth is
float32 metres along the camera's z axis, 0 where there is none.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import backproject, transform_points


@dataclass
class MatcherParams:
    """OpenCV StereoSGBM settings (disparities in pixels) and the post-processing that follows it."""

    num_disparities: int = 64  # search range, a multiple of 16
    min_disparity: int = 0
    block_size: int = 3
    p1: int = 8  # smoothness penalties, times block_size^2
    p2: int = 32
    uniqueness_ratio: int = 0  # the left-right check already drops ambiguous matches; a margin on top only opens holes
    lr_max_diff: int = 1  # left-right consistency: largest disagreement kept (pixels)
    speckle_window: int = 100
    speckle_range: int = 2
    upsample: int = 1  # match at this multiple of the resolution: finer sub-pixel disparities, sharper edges
    fill_occlusions: bool = True  # invalid pixels take the background (smaller) neighbouring disparity
    median: int = 3  # median filter size (0 for none)
    edge_block_size: int = 1  # a second, pixel-wise pass that restores foreground edges (0 for none)
    edge_p1: int = 4
    edge_p2: int = 16

    def nearest_depth_m(self, focal_px: float, baseline_m: float) -> float:
        """Nearest depth the search range reaches: nearer, the disparity leaves it and the pixel takes the
        background's. StereoSGBM's largest disparity is min + num - 1 of the pixels it matches in (the
        original ones over ``upsample``)."""
        return focal_px * baseline_m / (self.min_disparity + self.num_disparities - 1 / self.upsample)


def match(left: np.ndarray, right: np.ndarray, p: MatcherParams) -> tuple[np.ndarray, np.ndarray]:
    """Disparity of the left image (H,W) float32 and whether each pixel was matched (H,W) bool.

    StereoSGBM (full 8-path mode, optionally on images upsampled ``upsample`` times) with its left-right
    check, sub-pixel interpolation (1/16 px) and speckle filter. Block costs erode the foreground at depth
    edges (the left-right check drops pixels whose block straddles the edge); a pixel-wise pass
    (``edge_block_size``) restores them: its disparity replaces the block pass's where that has none or lies
    more than a pixel behind. Then occluded and unmatched pixels are filled from the nearer-background
    neighbour in their row, and a small median filter removes isolated errors.
    """
    s = p.upsample
    if s > 1:
        left = cv2.resize(left, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
        right = cv2.resize(right, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
    disparity = _sgbm(left, right, p, p.block_size, p.p1, p.p2)
    matched = disparity >= p.min_disparity
    if p.edge_block_size:
        fine = _sgbm(left, right, p, p.edge_block_size, p.edge_p1, p.edge_p2)
        use = (fine >= p.min_disparity) & (~matched | (fine > disparity + 1.0))
        disparity = np.where(use, fine, disparity)
        matched |= use
    disparity = np.where(matched, disparity, -1.0).astype(np.float32)
    if p.fill_occlusions:
        disparity = fill_from_background(disparity, matched)
    if p.median:
        filled = disparity >= 0
        disparity = np.where(filled, cv2.medianBlur(disparity, p.median), -1.0).astype(np.float32)
    return disparity, matched


def _sgbm(left: np.ndarray, right: np.ndarray, p: MatcherParams, block_size: int, p1: int, p2: int) -> np.ndarray:
    """StereoSGBM disparity (pixels of the original grid) of a pair upsampled ``p.upsample`` times, sampled
    back at the original pixels; below ``p.min_disparity`` where unmatched."""
    s = p.upsample
    sgbm = cv2.StereoSGBM_create(minDisparity=p.min_disparity * s, numDisparities=p.num_disparities * s,
                                 blockSize=block_size, P1=p1 * block_size ** 2, P2=p2 * block_size ** 2,
                                 disp12MaxDiff=p.lr_max_diff, uniquenessRatio=p.uniqueness_ratio,
                                 speckleWindowSize=p.speckle_window, speckleRange=p.speckle_range,
                                 mode=cv2.STEREO_SGBM_MODE_HH)
    raw = sgbm.compute(left, right).astype(np.float32) / (16.0 * s)
    return raw[s // 2::s, s // 2::s]  # back to the original grid: the sample nearest each pixel centre


def fill_from_background(disparity: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels with the smaller of the nearest valid disparities left and right in the row:
    occluded pixels belong to the background, which has the smaller disparity."""
    H, W = disparity.shape
    cols = np.arange(W)[None, :]
    left = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    right = np.minimum.accumulate(np.where(valid, cols, W)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(H)[:, None]
    from_left = np.where(left >= 0, disparity[rows, np.clip(left, 0, W - 1)], np.inf)
    from_right = np.where(right < W, disparity[rows, np.clip(right, 0, W - 1)], np.inf)
    fill = np.minimum(from_left, from_right)
    out = disparity.copy()
    hole = ~valid & np.isfinite(fill)
    out[hole] = fill[hole]
    return out


@dataclass
class Rectification:
    """Maps that rectify a stereo pair, and the rectified geometry."""

    maps_left: tuple[np.ndarray, np.ndarray]
    maps_right: tuple[np.ndarray, np.ndarray]
    R_left: np.ndarray  # (3,3) left camera frame -> rectified left frame
    focal_px: float
    baseline_m: float
    cx: float
    cy: float

    @property
    def identity(self) -> bool:
        return bool(np.allclose(self.R_left, np.eye(3), atol=1e-9))


def rectify(K_l, dist_l, K_r, dist_r, T_right_left: np.ndarray, size: tuple[int, int]) -> Rectification:
    """Rectification of a pair whose right camera sits at ``T_right_left`` (4,4: left frame -> right frame)."""
    baseline = float(np.linalg.norm(T_right_left[:3, 3]))
    if baseline < 1e-6:
        raise ValueError("the infrared pair has no baseline (the right camera sits on the left one)")
    R = np.ascontiguousarray(T_right_left[:3, :3], dtype=np.float64)
    t = np.ascontiguousarray(T_right_left[:3, 3], dtype=np.float64).reshape(3, 1)
    R1, R2, P1, P2, _, _, _ = cv2.stereoRectify(K_l, dist_l, K_r, dist_r, size, R, t,
                                                flags=cv2.CALIB_ZERO_DISPARITY, alpha=0)
    maps_l = cv2.initUndistortRectifyMap(K_l, dist_l, R1, P1, size, cv2.CV_32FC1)
    maps_r = cv2.initUndistortRectifyMap(K_r, dist_r, R2, P2, size, cv2.CV_32FC1)
    return Rectification(maps_l, maps_r, R1, float(P1[0, 0]), baseline, float(P1[0, 2]), float(P1[1, 2]))


def disparity_to_depth(disparity: np.ndarray, rect: Rectification) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth z = f b / d (H,W) float32 metres on the rectified left grid (0 where there is no disparity), the
    rectified camera's intrinsics (3,3) and its pose in the unrectified left frame (4,4: rectified -> left)."""
    depth = np.where(disparity > 0, rect.focal_px * rect.baseline_m / np.maximum(disparity, 1e-6), 0.0)
    K = np.array([[rect.focal_px, 0, rect.cx], [0, rect.focal_px, rect.cy], [0, 0, 1]])
    T_left_rect = np.eye(4)
    T_left_rect[:3, :3] = rect.R_left.T
    return depth.astype(np.float32), K, T_left_rect


# Neighbouring pixels of one surface differ in depth by less than this share (a 1 px disparity step at
# 33 px is 3 %): larger steps are occlusion edges, which the mesh must not bridge.
MAX_SURFACE_STEP = 0.03


def register(depth_src: np.ndarray, values_src: np.ndarray, K_src: np.ndarray, T_dst_src: np.ndarray,
             K: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Depth image (h,w) metres of a source camera (K_src) seen from a destination camera (K, size = (W, H)).

    The source grid is a triangle mesh (two triangles per 2x2 block of pixels with depth, none across an
    occlusion edge) rasterised with perspective-correct depth and a z-buffer, so that slanted surfaces land
    exactly. A pixel splat covers what the mesh cannot: pixels no triangle reaches, and the half-pixel
    strips at foreground edges where the splat is markedly nearer than the mesh behind. Returns depth (H,W)
    float32 (0 where nothing lands) and the (H,W) ``values_src`` carried with it (a pixel inside a triangle
    takes its nearest corner's value; 0 where nothing lands).
    """
    h, w = depth_src.shape
    W, H = size
    points = backproject(K_src, depth_src.astype(np.float64)).reshape(-1, 3)
    has_depth = depth_src.ravel() > 0
    p = transform_points(T_dst_src, points)
    has_depth &= p[:, 2] > 1e-6
    z = np.where(has_depth, p[:, 2], 1.0)
    u = K[0, 0] * p[:, 0] / z + K[0, 2]
    v = K[1, 1] * p[:, 1] / z + K[1, 2]
    values = values_src.ravel()

    corner = np.arange(h * w).reshape(h, w)
    a, b, c, d = (corner[:-1, :-1].ravel(), corner[:-1, 1:].ravel(), corner[1:, :-1].ravel(),
                  corner[1:, 1:].ravel())
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([d, c, b], 1)])  # (M,3) pixel indices
    tz = z[tris]
    tris = tris[has_depth[tris].all(1) & (tz.max(1) < tz.min(1) * (1 + MAX_SURFACE_STEP))]
    tu, tv, inv_z = u[tris], v[tris], 1.0 / z[tris]
    e1u, e1v, e2u, e2v = tu[:, 1] - tu[:, 0], tv[:, 1] - tv[:, 0], tu[:, 2] - tu[:, 0], tv[:, 2] - tv[:, 0]
    det = e1u * e2v - e2u * e1v
    u_lo, v_lo = np.ceil(tu.min(1)).astype(int), np.ceil(tv.min(1)).astype(int)
    u_hi, v_hi = np.floor(tu.max(1)).astype(int), np.floor(tv.max(1)).astype(int)
    # A triangle of one surface covers a pixel or two; longer ones (surfaces seen edge-on) and degenerate
    # ones are left to the splat.
    keep = (np.abs(det) > 1e-12) & (u_hi - u_lo < 4) & (v_hi - v_lo < 4)
    cells, zs, cell_values = [], [], []
    for dv in range(4):
        for du in range(4):
            pu, pv = u_lo + du, v_lo + dv
            m = keep & (pu <= u_hi) & (pv <= v_hi) & (pu >= 0) & (pu < W) & (pv >= 0) & (pv < H)
            qu, qv = pu[m] - tu[m, 0], pv[m] - tv[m, 0]
            l1 = (qu * e2v[m] - e2u[m] * qv) / det[m]
            l2 = (e1u[m] * qv - qu * e1v[m]) / det[m]
            l0 = 1 - l1 - l2
            inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
            iz = inv_z[m]
            cells.append((pv[m] * W + pu[m])[inside])
            zs.append((1.0 / (l0 * iz[:, 0] + l1 * iz[:, 1] + l2 * iz[:, 2]))[inside])
            nearest_corner = np.argmax(np.stack([l0, l1, l2], 1), axis=1)
            cell_values.append(values[tris[m][np.arange(len(nearest_corner)), nearest_corner]][inside])
    depth, out_values = _zbuffer(np.concatenate(cells), np.concatenate(zs), np.concatenate(cell_values), H * W)

    splat_depth, splat_values = _splat(p[has_depth], values[has_depth], K, size)
    use_splat = (splat_depth > 0) & ((depth == 0) | (splat_depth < depth * (1 - MAX_SURFACE_STEP)))
    depth = np.where(use_splat, splat_depth, depth)
    out_values = np.where(use_splat, splat_values, out_values)
    return depth.reshape(H, W).astype(np.float32), out_values.reshape(H, W)


def _zbuffer(cells: np.ndarray, zs: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The nearest of the candidate depths ``zs`` landing on each of ``n`` flat cells, and its value
    (0 and 0 where none lands)."""
    depth = np.full(n, np.inf)
    np.minimum.at(depth, cells, zs)
    winner = zs <= depth[cells]
    out_values = np.zeros(n, dtype=values.dtype)
    out_values[cells[winner]] = values[winner]
    depth[~np.isfinite(depth)] = 0
    return depth, out_values


def _splat(p: np.ndarray, values: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(N,3) destination-camera points splatted onto the four pixel centres around each projection, the
    nearest winning: flat (H*W,) depth (0 where nothing lands) and values."""
    W, H = size
    u = K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2]
    v = K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2]
    cells, zs, cell_values = [], [], []
    for du in (0, 1):
        for dv in (0, 1):
            uu, vv = np.floor(u).astype(int) + du, np.floor(v).astype(int) + dv
            ok = (uu >= 0) & (uu < W) & (vv >= 0) & (vv < H)
            cells.append(vv[ok] * W + uu[ok])
            zs.append(p[ok, 2])
            cell_values.append(values[ok])
    return _zbuffer(np.concatenate(cells), np.concatenate(zs), np.concatenate(cell_values), H * W)
