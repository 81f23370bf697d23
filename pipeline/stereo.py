"""Stereo matching of a rectified pair, rectification of an infrared pair, and depth registration.

Images are (H, W) uint8; disparities are float32 pixels (left image), -1 where there is none; depth is
float32 metres along the camera's z axis, 0 where there is none.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import transform_points


@dataclass
class MatcherParams:
    """OpenCV StereoSGBM settings (disparities in pixels) and the post-processing that follows it."""

    num_disparities: int = 64  # search range, a multiple of 16
    min_disparity: int = 0
    block_size: int = 3
    p1: int = 8  # smoothness penalties, times block_size^2
    p2: int = 32
    uniqueness_ratio: int = 10
    lr_max_diff: int = 1  # left-right consistency: largest disagreement kept (pixels)
    speckle_window: int = 100
    speckle_range: int = 2
    upsample: int = 1  # match at this multiple of the resolution: finer sub-pixel disparities, sharper edges
    fill_occlusions: bool = True  # invalid pixels take the background (smaller) neighbouring disparity
    median: int = 3  # median filter size (0 for none)


def match(left: np.ndarray, right: np.ndarray, p: MatcherParams) -> tuple[np.ndarray, np.ndarray]:
    """Disparity of the left image (H,W) float32 and whether each pixel was matched (H,W) bool.

    StereoSGBM (full 8-path mode, optionally on images upsampled ``upsample`` times) with its left-right
    check, sub-pixel interpolation (1/16 px) and speckle filter; then occluded and unmatched pixels are filled from the nearer-background neighbour
    in their row, and a small median filter removes isolated errors.
    """
    s = p.upsample
    if s > 1:
        left = cv2.resize(left, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
        right = cv2.resize(right, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
    bs = p.block_size
    sgbm = cv2.StereoSGBM_create(minDisparity=p.min_disparity * s, numDisparities=p.num_disparities * s, blockSize=bs,
                                 P1=p.p1 * bs * bs, P2=p.p2 * bs * bs, disp12MaxDiff=p.lr_max_diff,
                                 uniquenessRatio=p.uniqueness_ratio, speckleWindowSize=p.speckle_window,
                                 speckleRange=p.speckle_range, mode=cv2.STEREO_SGBM_MODE_HH)
    raw = sgbm.compute(left, right).astype(np.float32) / (16.0 * s)
    if s > 1:  # back to the original grid: the sample nearest each pixel centre
        raw = raw[s // 2::s, s // 2::s]
    matched = raw >= p.min_disparity
    disparity = np.where(matched, raw, -1.0).astype(np.float32)
    if p.fill_occlusions:
        disparity = fill_from_background(disparity, matched)
    if p.median:
        filled = disparity >= 0
        disparity = np.where(filled, cv2.medianBlur(disparity, p.median), -1.0).astype(np.float32)
    return disparity, matched


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


def disparity_to_points(disparity: np.ndarray, rect: Rectification) -> tuple[np.ndarray, np.ndarray]:
    """(N,3) points in the (unrectified) left camera frame, and the (N,) flat pixel indices they came from."""
    v, u = np.nonzero(disparity > 0)
    z = rect.focal_px * rect.baseline_m / disparity[v, u]
    p = np.stack([(u - rect.cx) * z / rect.focal_px, (v - rect.cy) * z / rect.focal_px, z], axis=1)
    return p @ rect.R_left, v * disparity.shape[1] + u  # R_left^T maps rectified -> left


def register(points: np.ndarray, values: np.ndarray, T_dst_src: np.ndarray, K: np.ndarray,
             size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Splat (N,3) points of a source camera into a destination camera (K, size = (W, H)) with a z-buffer.

    Each point covers the four destination pixel centres around its projection, the nearest surface
    winning, so that resolutions close to each other leave no holes. Returns depth (H,W) float32 (0 where
    nothing lands) and the (H,W) ``values`` of the winning points (0 where nothing lands).
    """
    W, H = size
    p = transform_points(T_dst_src, points)
    front = p[:, 2] > 1e-6
    p, values = p[front], values[front]
    u = K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2]
    v = K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2]
    depth = np.full(H * W, np.inf, dtype=np.float64)
    cells, zs, order_vals = [], [], []
    for du in (0, 1):
        for dv in (0, 1):
            uu, vv = np.floor(u).astype(int) + du, np.floor(v).astype(int) + dv
            ok = (uu >= 0) & (uu < W) & (vv >= 0) & (vv < H)
            cells.append(vv[ok] * W + uu[ok])
            zs.append(p[ok, 2])
            order_vals.append(values[ok])
    cells, zs, order_vals = np.concatenate(cells), np.concatenate(zs), np.concatenate(order_vals)
    np.minimum.at(depth, cells, zs)
    winner = zs <= depth[cells]
    out_vals = np.zeros(H * W, dtype=values.dtype)
    out_vals[cells[winner]] = order_vals[winner]
    depth[~np.isfinite(depth)] = 0
    return depth.reshape(H, W).astype(np.float32), out_vals.reshape(H, W)
