"""Prompts for a promptable video segmenter (SAM2), made from 3D object clusters.

Each object's fused 3D points (world frame, metres) are projected into every camera; the projections
the camera really sees (in front of its own depth, or on top of the cloud's own z-buffer when no depth
is given) are rasterised into a small mask. Its bounding box is the box prompt and its most interior
pixel (largest distance to the mask's edge) the point prompt. Because every view's prompt for an
object comes from the same 3D cluster, the object carries one id in all views.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import project


def visible_projection(points: np.ndarray, K: np.ndarray, T_cw: np.ndarray, shape: tuple[int, int],
                       depth: np.ndarray | None, margin_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixels (M,2) as (u, v) of the (N,3) ``points`` that one camera sees, and their (M,) indices.

    A point is seen when it projects inside the image in front of the camera and no surface lies more
    than ``margin_m`` in front of it: the camera's own ``depth`` (H,W metres, 0 = none, which counts as
    seen) or, without depth, the nearest of the points themselves at that pixel."""
    H, W = shape
    uv, z = project(K, T_cw, points)
    with np.errstate(invalid="ignore"):
        px = np.rint(uv).astype(np.int64)
    inside = np.flatnonzero((z > 0) & (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H))
    u, v, zi = px[inside, 0], px[inside, 1], z[inside]
    if depth is None:
        nearest = np.full(H * W, np.inf)
        np.minimum.at(nearest, v * W + u, zi)
        front = nearest[v * W + u]
    else:
        front = depth[v, u]
        front = np.where(front > 0, front, np.inf)
    seen = zi <= front + margin_m
    return np.stack([u[seen], v[seen]], axis=1), inside[seen]


def prompt_from_pixels(pixels: np.ndarray, shape: tuple[int, int], min_pixels: int) -> dict | None:
    """Box [x0, y0, x1, y1] and point [u, v] (pixels) of a cluster's visible (M,2) pixels, or None when
    fewer than ``min_pixels`` distinct pixels are seen. The mask is closed over one-pixel gaps between
    projected points before the point is placed at its most interior pixel."""
    H, W = shape
    mask = np.zeros((H, W), bool)
    mask[pixels[:, 1], pixels[:, 0]] = True
    if mask.sum() < min_pixels:
        return None
    mask = ndimage.binary_closing(mask, iterations=2) | mask
    ys, xs = np.nonzero(mask)
    inner = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    v, u = np.unravel_index(np.argmax(inner), mask.shape)
    return {"box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())], "point": [int(u), int(v)]}


def cluster_prompts(points: np.ndarray, labels: np.ndarray, K: np.ndarray, T_cw: np.ndarray,
                    shape: tuple[int, int], depths: np.ndarray | None = None, min_pixels: int = 20,
                    margin_m: float = 0.01) -> list[dict[int, dict]]:
    """Per camera, {object id: {"box", "point"}} for the (N,3) points with ``labels`` 1..K (0 = none).

    K (C,3,3), T_cw (C,4,4) world to camera, depths (C,H,W) metres or None. An object a camera sees in
    fewer than ``min_pixels`` pixels gets no prompt in that camera."""
    prompts = []
    ids = [int(k) for k in np.unique(labels[labels > 0])]
    for c in range(len(K)):
        if depths is None:
            # One z-buffer over all clusters, so an object hidden behind another gets no prompt.
            pixels, index = visible_projection(points[labels > 0], K[c], T_cw[c], shape, None, margin_m)
            seen_labels = labels[labels > 0][index]
        else:
            pixels, index = visible_projection(points, K[c], T_cw[c], shape, depths[c], margin_m)
            seen_labels = labels[index]
        view = {}
        for k in ids:
            prompt = prompt_from_pixels(pixels[seen_labels == k], shape, min_pixels)
            if prompt is not None:
                view[k] = prompt
        prompts.append(view)
    return prompts
