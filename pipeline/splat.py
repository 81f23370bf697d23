"""Gaussian splatting: one renderer interface, two backends.

``render`` draws 3D Gaussians into a batch of pinhole cameras and returns colour (any number of feature
channels), expected depth and alpha, differentiable with respect to every Gaussian parameter.
``contributions`` gives, for every Gaussian and every label of a label image, the largest compositing
weight γ = α_i(u) Π_{j in front of i} (1 − α_j(u)) it has at a pixel u of that label (object-id voting).

Backends:
- ``torch``: a reference in PyTorch, tile-culled (8×8 tiles; a Gaussian is evaluated only in the tiles
  its α ≥ 1/255 ellipse touches) and composited front to back in depth-sorted chunks, so tiles whose
  pixels are all opaque stop early. It runs on CPU (and on CUDA tensors).
- ``gsplat``: gsplat's CUDA ``rasterization``, same conventions, chosen by ``backend="auto"`` on CUDA.

Conventions (as in gsplat, so the two agree, but for one): covariance Σ = R S Sᵀ Rᵀ with R from the
quaternion and S = diag(scales); 2D covariance by the EWA Jacobian of the perspective projection, with the
camera-space point clamped to 1.3× the field of view, plus 0.3 px² of blur; α = min(0.99, o·exp(−½ dᵀΣ⁻¹d))
as in the original 3DGS rasterizer (gsplat's kernels cap α at 0.999: a pixel under one opaque Gaussian
differs by 0.009 in α, within the GPU parity test's tolerance), dropped below 1/255; compositing stops
before a Gaussian that would leave transmittance below 1e-4.
Pixel centres sit at integer coordinates (OpenCV); gsplat's sit at +0.5, which the gsplat backend
absorbs by shifting the principal point.

Shapes and units: means (N,3) metres in the world frame; quats (N,4) (x, y, z, w), any norm; scales
(N,3) metres (standard deviations along the Gaussian's axes); opacities (N,) in (0, 1); features (N,F);
K (C,3,3); T_cw (C,4,4) world-to-camera. Outputs are (C,H,W,F) features, (C,H,W) depth in metres along
the optical axis (α-weighted mean, 0 where α = 0) and (C,H,W) α.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

TILE = 8
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
BLUR_PX2 = 0.3
NEAR_M = 0.01
CHUNK = 32  # Gaussians per tile composited at once, front to back


class Rendered(NamedTuple):
    features: torch.Tensor  # (C,H,W,F), premultiplied by alpha (composite a background with 1 - alpha)
    depth: torch.Tensor     # (C,H,W) metres
    alpha: torch.Tensor     # (C,H,W)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(N,4) quaternions (x, y, z, w), normalised here -> (N,3,3) rotation matrices."""
    x, y, z, w = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*quats.shape[:-1], 3, 3)


class Projected(NamedTuple):
    mean2d: torch.Tensor  # (C,N,2) pixels
    depth: torch.Tensor   # (C,N) metres
    conic: torch.Tensor   # (C,N,3) upper triangle (a, b, c) of the inverse 2D covariance
    extent: torch.Tensor  # (C,N,2) half-size in pixels of the box holding the α ≥ 1/255 ellipse; 0 = culled


def project(means, quats, scales, opacities, K, T_cw, width: int, height: int) -> Projected:
    """Perspective projection of 3D Gaussians to 2D ones (EWA splatting), with culling."""
    R = quat_to_rotmat(quats)
    M = R * scales[:, None, :]
    cov = M @ M.transpose(1, 2)                                     # (N,3,3) world
    Rc, tc = T_cw[:, :3, :3], T_cw[:, :3, 3]
    p = torch.einsum("cij,nj->cni", Rc, means) + tc[:, None]         # (C,N,3) camera
    cov_c = Rc[:, None] @ cov[None] @ Rc.transpose(1, 2)[:, None]    # (C,N,3,3)
    x, y, z = p.unbind(-1)
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    front = z > NEAR_M
    zs = torch.where(front, z, torch.ones_like(z))
    # As gsplat: the Jacobian is taken at a point clamped to 1.3x the image, so edge Gaussians stay small.
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = zs * torch.minimum((width - 1 - cx) / fx + 0.3 * tan_x, torch.maximum(-(cx / fx + 0.3 * tan_x), x / zs))
    ty = zs * torch.minimum((height - 1 - cy) / fy + 0.3 * tan_y, torch.maximum(-(cy / fy + 0.3 * tan_y), y / zs))
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs ** 2, zero, fy / zs, -fy * ty / zs ** 2], -1).reshape(*zs.shape, 2, 3)
    cov2 = J @ cov_c @ J.transpose(-1, -2)
    c00, c01, c11 = cov2[..., 0, 0] + BLUR_PX2, cov2[..., 0, 1], cov2[..., 1, 1] + BLUR_PX2
    det = (c00 * c11 - c01 * c01).clamp_min(1e-12)
    conic = torch.stack([c11 / det, -c01 / det, c00 / det], -1)
    mean2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    with torch.no_grad():
        # alpha >= 1/255 inside the ellipse d' S^-1 d <= r^2 with r^2 = 2 ln(255 o): its bounding box.
        r2 = 2 * torch.log((opacities.clamp(max=ALPHA_MAX) / ALPHA_MIN).clamp_min(1.0))
        extent = torch.stack([torch.sqrt(r2 * c00), torch.sqrt(r2 * c11)], -1)
        visible = front & (r2 > 0) & (mean2d[..., 0] + extent[..., 0] >= -0.5) & \
            (mean2d[..., 0] - extent[..., 0] <= width - 0.5) & (mean2d[..., 1] + extent[..., 1] >= -0.5) & \
            (mean2d[..., 1] - extent[..., 1] <= height - 0.5)
        extent = extent * visible[..., None]
    return Projected(mean2d, z, conic, extent)


class TileLists(NamedTuple):
    camera: torch.Tensor    # (A,) camera of each active tile
    origin: torch.Tensor    # (A,2) pixel (x, y) of the tile's top-left pixel
    gaussian: torch.Tensor  # (A,Kmax) Gaussians touching the tile, nearest first; N marks padding
    count: torch.Tensor     # (A,) how many


def tile_lists(proj: Projected, width: int, height: int) -> TileLists:
    """Which Gaussians touch which TILE×TILE tile, sorted front to back, as padded per-tile lists."""
    C, N = proj.depth.shape
    tx, ty = -(-width // TILE), -(-height // TILE)
    with torch.no_grad():
        m, e = proj.mean2d.detach(), proj.extent
        lo = torch.floor((m - e + 0.5) / TILE).long()
        hi = torch.floor((m + e + 0.5) / TILE).long()
        lo[..., 0].clamp_(0, tx - 1), hi[..., 0].clamp_(0, tx - 1)
        lo[..., 1].clamp_(0, ty - 1), hi[..., 1].clamp_(0, ty - 1)
        nx, ny = hi[..., 0] - lo[..., 0] + 1, hi[..., 1] - lo[..., 1] + 1
        n_tiles = torch.where(e[..., 0] > 0, nx * ny, torch.zeros_like(nx)).reshape(-1)   # (C*N,)
        pair = torch.repeat_interleave(torch.arange(C * N, device=m.device), n_tiles)
        start = torch.cumsum(n_tiles, 0) - n_tiles
        k = torch.arange(len(pair), device=m.device) - start[pair]
        nx_p = nx.reshape(-1)[pair]
        tile_x = lo[..., 0].reshape(-1)[pair] + k % nx_p
        tile_y = lo[..., 1].reshape(-1)[pair] + k // nx_p
        cam, gauss = pair // N, pair % N
        key = (cam * ty + tile_y) * tx + tile_x
        order = torch.argsort(proj.depth.detach().reshape(-1)[pair], stable=True)
        order = order[torch.argsort(key[order], stable=True)]
        key, gauss = key[order], gauss[order]
        counts = torch.bincount(key, minlength=C * ty * tx)
        active = torch.nonzero(counts).squeeze(1)
        kmax = int(counts.max()) if len(key) else 0
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(key), device=m.device) - first[key]
        row = torch.searchsorted(active, key)
        lists = torch.full((len(active), max(kmax, 1)), N, dtype=torch.long, device=m.device)
        lists[row, slot] = gauss
        cam_a = active // (ty * tx)
        rest = active % (ty * tx)
        origin = torch.stack([rest % tx, rest // tx], -1) * TILE
    return TileLists(cam_a, origin, lists, counts[active])


def _tile_pixels(origin: torch.Tensor, dtype) -> torch.Tensor:
    """(A,P,2) pixel coordinates (x, y) of each tile's pixels, row-major."""
    r = torch.arange(TILE, device=origin.device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2)
    return origin[:, None, :].to(dtype) + grid


def _composite(proj: Projected, opacities, values, tiles: TileLists, labels=None, n_labels: int = 0):
    """Front-to-back compositing per tile (P = TILE² pixels). values (C,N,V): features and depth per camera
    and Gaussian. Returns (A,P,V) accumulated values and (A,P) alpha; with ``labels`` ((A,P) label per pixel),
    instead the (C,N,n_labels) largest weight of each Gaussian per label."""
    A, kmax = tiles.gaussian.shape
    C, N = proj.depth.shape
    # Tile-local pixel coordinates 0..TILE-1, (TILE,1): x along a row, y down the tile (pixel p = y TILE + x).
    r = torch.arange(TILE, device=opacities.device, dtype=opacities.dtype)[:, None]
    pad = lambda x: torch.cat([x, x.new_zeros((C, 1, *x.shape[2:]))], 1)  # noqa: E731
    mean2d, conic = pad(proj.mean2d), pad(proj.conic)
    vals = pad(values) if labels is None else None
    log_opac = torch.cat([torch.log(opacities.clamp(min=1e-12)), opacities.new_full((1,), -1e4)])
    trans = opacities.new_ones(A, TILE * TILE)
    acc = opacities.new_zeros(A, TILE * TILE, values.shape[-1]) if labels is None else None
    done = torch.zeros(A, TILE * TILE, dtype=torch.bool, device=opacities.device)
    best = opacities.new_zeros(C * (N + 1) * max(n_labels, 1)) if labels is not None else None
    live = torch.arange(A, device=opacities.device)  # tiles still compositing
    for s in range(0, kmax, CHUNK):
        live = live[tiles.count[live] > s]
        if s:
            live = live[~done[live].all(1)]
        if not len(live):
            break
        g = tiles.gaussian[live, s:s + CHUNK]                                  # (L,k)
        cam = tiles.camera[live, None].expand_as(g)
        # index_select, not advanced indexing: its backward (index_add) adds up in a fixed order.
        flat = (cam * (N + 1) + g).reshape(-1)
        take = lambda x: x.reshape(C * (N + 1), -1).index_select(0, flat).reshape(*g.shape, -1)  # noqa: E731
        m = take(mean2d) - tiles.origin[live, None].to(mean2d.dtype)          # (L,k,2) tile-local
        a, b, c = take(conic).unbind(-1)
        mx, my = m.unbind(-1)
        # The exponent is a quadratic in x and y: a term in x alone, one in y alone and the cross term,
        # (L,TILE,k) each, summed over the tile by broadcasting. Elementwise, its backward rounds the same at
        # one thread as at two (as a matmul, a chunk of one tile made a single small sgemm, whose gradient MKL
        # splits by thread).
        in_x = (-0.5 * a[:, None]) * r * r + (a * mx + b * my)[:, None] * r          # (L,TILE,k) over x = r
        in_y = (-0.5 * c[:, None]) * r * r + (c * my + b * mx)[:, None] * r + (     # (L,TILE,k) over y = r
            log_opac.index_select(0, g.reshape(-1)).reshape(g.shape)
            - 0.5 * (a * mx * mx + c * my * my) - b * mx * my)[:, None]
        cross = -b[:, None] * r                                                    # (L,TILE,k) over x, times y
        exponent = in_y[:, :, None] + in_x[:, None] + r[:, :, None] * cross[:, None]   # (L,TILE,TILE,k)
        exponent = exponent.reshape(len(live), TILE * TILE, -1)
        alpha = torch.exp(exponent).clamp(max=ALPHA_MAX)                      # (L,P,k)
        keep = alpha >= ALPHA_MIN
        t_live, d_live = trans[live], done[live]
        if d_live.any():
            keep = keep & ~d_live[:, :, None]
        alpha = alpha * keep
        inclusive = torch.cumprod(1 - alpha, -1)
        # Stop before a Gaussian that leaves the transmittance below T_MIN (as gsplat does).
        stop = (t_live[:, :, None] * inclusive) <= T_MIN
        if stop.any():
            stop = torch.cummax(stop.to(torch.uint8), -1).values.bool()
            alpha = alpha * ~stop
            inclusive = torch.cumprod(1 - alpha, -1)
            done = done.index_copy(0, live, d_live | stop[..., -1])
        weight = alpha * (t_live[:, :, None] * inclusive / (1 - alpha))      # (L,P,k)
        if labels is None:
            acc = acc.index_add(0, live, torch.matmul(weight, take(vals)))
        else:
            idx = ((cam[:, None] * (N + 1) + g[:, None]) * n_labels + labels[live][:, :, None]).reshape(-1)
            best.scatter_reduce_(0, idx, weight.reshape(-1), "amax")
        trans = trans.index_copy(0, live, t_live * inclusive[..., -1])
    if labels is not None:
        return best.reshape(C, N + 1, n_labels)[:, :N]
    return acc, 1 - trans


def _to_images(per_tile: torch.Tensor, tiles: TileLists, C: int, width: int, height: int) -> torch.Tensor:
    """(A,P,...) per-tile values -> (C,H,W,...) images, zero in tiles no Gaussian touches."""
    tx, ty = -(-width // TILE), -(-height // TILE)
    rest = per_tile.shape[2:]
    full = per_tile.new_zeros(C * ty * tx, TILE * TILE, *rest)
    tile_index = (tiles.camera * ty + tiles.origin[:, 1] // TILE) * tx + tiles.origin[:, 0] // TILE
    full = full.index_copy(0, tile_index, per_tile)
    full = full.reshape(C, ty, tx, TILE, TILE, *rest).transpose(2, 3).reshape(C, ty * TILE, tx * TILE, *rest)
    return full[:, :height, :width]


def _labels_per_tile(labels: torch.Tensor, tiles: TileLists) -> torch.Tensor:
    """(C,H,W) label images -> (A,P) labels of each active tile's pixels (0 outside the image)."""
    C, H, W = labels.shape
    padded = labels.new_zeros(C, -(-H // TILE) * TILE, -(-W // TILE) * TILE)
    padded[:, :H, :W] = labels
    pix = _tile_pixels(tiles.origin, torch.float32).long()
    return padded[tiles.camera[:, None], pix[..., 1], pix[..., 0]]


def _render_torch(means, quats, scales, opacities, features, K, T_cw, width, height) -> Rendered:
    C = K.shape[0]
    proj = project(means, quats, scales, opacities, K, T_cw, width, height)
    tiles = tile_lists(proj, width, height)
    F = features.shape[-1]
    values = torch.cat([features[None].expand(C, -1, -1), proj.depth[..., None]], -1)   # (C,N,F+1)
    acc, alpha = _composite(proj, opacities, values, tiles)
    acc, alpha = _to_images(acc, tiles, C, width, height), _to_images(alpha, tiles, C, width, height)
    depth = torch.where(alpha > 0, acc[..., F] / alpha.clamp_min(1e-10), torch.zeros_like(alpha))
    return Rendered(acc[..., :F], depth, alpha)


def _render_gsplat(means, quats, scales, opacities, features, K, T_cw, width, height) -> Rendered:
    from gsplat import rasterization

    K_gs = K.clone()
    K_gs[:, :2, 2] += 0.5  # gsplat's pixel centres are at +0.5
    out, alpha, _ = rasterization(means, quats[:, [3, 0, 1, 2]], scales, opacities, features, T_cw, K_gs,
                                  width, height, near_plane=NEAR_M, eps2d=BLUR_PX2, render_mode="RGB+ED",
                                  packed=False)
    alpha = alpha[..., 0]
    F = features.shape[-1]
    return Rendered(out[..., :F], out[..., F] * (alpha > 0), alpha)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        if device.type == "cuda":
            try:
                import gsplat  # noqa: F401

                return "gsplat"
            except ImportError:
                return "torch"
        return "torch"
    if backend not in ("torch", "gsplat"):
        raise ValueError(f"unknown renderer backend {backend!r}: torch, gsplat or auto")
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError("the gsplat backend needs CUDA tensors; use backend='torch' on CPU")
    return backend


def render(means, quats, scales, opacities, features, K, T_cw, width: int, height: int,
           backend: str = "auto") -> Rendered:
    """Render N Gaussians into C cameras (shapes in the module docstring)."""
    if resolve_backend(backend, means.device) == "torch":
        return _render_torch(means, quats, scales, opacities, features, K, T_cw, width, height)
    return _render_gsplat(means, quats, scales, opacities, features, K, T_cw, width, height)


@torch.no_grad()
def contributions(means, quats, scales, opacities, K, T_cw, labels: torch.Tensor, n_labels: int) -> torch.Tensor:
    """(C,N,n_labels): for each camera, Gaussian and label, the largest compositing weight γ the Gaussian
    has at a pixel of that label in the (C,H,W) integer ``labels`` images (0 where it has none)."""
    C, H, W = labels.shape
    proj = project(means, quats, scales, opacities, K, T_cw, W, H)
    tiles = tile_lists(proj, W, H)
    return _composite(proj, opacities, None, tiles, _labels_per_tile(labels.long(), tiles), n_labels)


def brute_force(means, quats, scales, opacities, features, K, T_cw, width: int, height: int) -> Rendered:
    """The compositing equation evaluated at every pixel over every Gaussian, no tiles: the reference's
    reference, for tests on tiny inputs."""
    proj = project(means, quats, scales, opacities, K, T_cw, width, height)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=means.dtype), torch.arange(width, dtype=means.dtype),
                            indexing="ij")
    outs = []
    for c in range(K.shape[0]):
        order = torch.argsort(proj.depth[c])
        order = order[proj.extent[c, order, 0] > 0]
        d = torch.stack([xs, ys], -1)[:, :, None] - proj.mean2d[c, order]       # (H,W,n,2)
        a, b, cc = proj.conic[c, order].unbind(-1)
        power = -0.5 * (a * d[..., 0] ** 2 + cc * d[..., 1] ** 2) - b * d[..., 0] * d[..., 1]
        alpha = (opacities[order] * torch.exp(power)).clamp(max=ALPHA_MAX)
        alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
        after = torch.cumprod(1 - alpha, -1)
        stop = torch.cummax((after <= T_MIN).to(torch.uint8), -1).values.bool()
        alpha = torch.where(stop, torch.zeros_like(alpha), alpha)
        front = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], -1), -1)
        w = alpha * front
        acc_alpha = w.sum(-1)
        feat = w @ features[order]
        depth = torch.where(acc_alpha > 0, (w * proj.depth[c, order]).sum(-1) / acc_alpha.clamp_min(1e-10),
                            torch.zeros_like(acc_alpha))
        outs.append((feat, depth, acc_alpha))
    return Rendered(*(torch.stack(x) for x in zip(*outs)))



def read_splat_file(path) -> dict[str, np.ndarray]:
    """Gaussians from a ``.splat`` file (antimatter15's 32 bytes per Gaussian: position f32x3, scale f32x3
    (standard deviations), RGBA u8x4 (A = opacity), rotation u8x4 as (w, x, y, z) mapped from [-1, 1]).
    Returns means (N,3), quats (N,4, x y z w), scales (N,3), opacities (N,), colours (N,3) in [0, 1]."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 32:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of 32-byte splats")
    rec = raw.reshape(-1, 32)
    floats = rec[:, :24].copy().view(np.float32)
    rgba = rec[:, 24:28].astype(np.float32) / 255.0
    wxyz = (rec[:, 28:32].astype(np.float32) - 128.0) / 128.0
    return {"means": floats[:, :3], "scales": floats[:, 3:6], "colours": rgba[:, :3], "opacities": rgba[:, 3],
            "quats": wxyz[:, [1, 2, 3, 0]]}
