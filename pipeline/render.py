"""Exact ray casting of shape unions, for the synthetic RealSense capture.

A pinhole ray per pixel centre gives exact per-pixel depth and instance ids (the ground truth); colour is
Lambert shading under an ambient and a directional key light with cast shadows; infrared images add the
dots of a structured-light projector, shadowed where the projector cannot see the surface.

Shapes: points (N,3) in metres. Images are (H,W) or (H,W,3) float arrays in [0, 1] before quantisation.
Instance id 0 is the table and background; objects are numbered from 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .geometry import invert_T, perpendicular_basis, pixel_rays, transform_points
from .shapes import Shape

FLOOR_Z = -0.75  # floor under the table, seen past the table's edges
FLOOR_ALBEDO = np.array([0.25, 0.25, 0.27])


# -- appearance ------------------------------------------------------------------------------------

def sample_bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray, border: float) -> np.ndarray:
    """Bilinear lookup of a float32 (H,W) image at (N,) pixel coordinates; ``border`` outside."""
    n = len(u)
    cols = 4096  # cv2.remap maps must stay under 32767 on a side
    rows = -(-n // cols)
    maps = np.full((2, rows * cols), -10.0, np.float32)
    maps[0, :n], maps[1, :n] = u, v
    out = cv2.remap(img, maps[0].reshape(rows, cols), maps[1].reshape(rows, cols), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    return out.ravel()[:n]


def _hash01(ix, iy, iz, seed=0):
    """Deterministic pseudo-random value in [0, 1) per integer lattice point."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (iz.astype(np.int64) * 83492791)
    h = (h ^ (seed * 2654435761)) & 0xFFFFFFFF
    h = (h * 2246822519) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 3266489917) & 0xFFFFFFFF
    h ^= h >> 16
    return (h & 0xFFFFFF) / float(0x1000000)


def value_noise(p: np.ndarray, scale: float, octaves: int = 3) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] of (N,3) points; features about ``scale`` metres across."""
    total = np.zeros(len(p))
    amp_sum = 0.0
    for o in range(octaves):
        q = p / (scale / 2**o)
        i = np.floor(q)
        f = q - i
        f = f * f * (3 - 2 * f)
        i = i.astype(np.int64)
        acc = np.zeros(len(p))
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    w = ((f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
                         * (f[:, 2] if dz else 1 - f[:, 2]))
                    acc += w * _hash01(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, seed=o)
        amp = 0.5**o
        total += amp * acc
        amp_sum += amp
    return total / amp_sum


def albedo(appearance: dict, p_local: np.ndarray) -> np.ndarray:
    """(N,3) albedo in [0, 1] of object-frame points under an appearance description."""
    if "image" in appearance:  # a printed texture on the +z face (calibration board)
        img, (w, h) = appearance["image"], appearance["extent"]
        u = (p_local[:, 0] / w + 0.5) * img.shape[1] - 0.5
        v = (0.5 - p_local[:, 1] / h) * img.shape[0] - 0.5
        top = p_local[:, 2] > appearance["top_z"] - 1e-6
        val = sample_bilinear(img, u, v, border=1.0)
        val = np.where(top, val, 1.0)
        return np.repeat(val[:, None], 3, axis=1)
    colors = np.asarray(appearance["colors"], dtype=float) / 255.0
    pattern = appearance["pattern"]
    if pattern == "solid" or len(colors) == 1:
        return np.broadcast_to(colors[0], (len(p_local), 3)).copy()
    scale = appearance.get("scale", 0.01)
    if pattern == "checker":
        k = np.floor(p_local / scale).astype(np.int64).sum(axis=1) % len(colors)
        return colors[k]
    if pattern == "stripes":
        axis = np.asarray(appearance.get("axis", [0, 0, 1]), dtype=float)
        k = np.floor(p_local @ (axis / np.linalg.norm(axis)) / scale).astype(np.int64) % len(colors)
        return colors[k]
    if pattern == "noise":
        s = value_noise(p_local, scale)[:, None]
        return colors[0] * (1 - s) + colors[1] * s
    raise ValueError(f"unknown appearance pattern {pattern!r}")


# -- scene -----------------------------------------------------------------------------------------

@dataclass
class RenderObject:
    shape: Shape
    T_wo: np.ndarray  # (4,4) object-to-world
    object_id: int
    appearances: list[dict]  # one per part of the shape


@dataclass
class Table:
    """The table top (z = 0, centred on the world origin); its texture is baked into an image once."""

    size: tuple[float, float]
    appearance: dict
    texel: float = 0.002  # metres per texture pixel

    def __post_init__(self):
        nx, ny = (int(np.ceil(s / self.texel)) + 1 for s in self.size)
        x, y = np.meshgrid(np.arange(nx) * self.texel - self.size[0] / 2, np.arange(ny) * self.texel - self.size[1] / 2)
        p = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)
        self.texture = albedo(self.appearance, p).reshape(ny, nx, 3).astype(np.float32)

    def albedo(self, p: np.ndarray) -> np.ndarray:
        u = (p[:, 0] + self.size[0] / 2) / self.texel
        v = (p[:, 1] + self.size[1] / 2) / self.texel
        return np.stack([sample_bilinear(np.ascontiguousarray(self.texture[..., c]), u, v, 0.0) for c in range(3)], 1)


@dataclass
class Hits:
    t: np.ndarray  # (N,) ray parameter (inf: nothing)
    ids: np.ndarray  # (N,) instance id, 0 for table/background
    normal: np.ndarray  # (N,3) world-frame unit normal
    albedo: np.ndarray  # (N,3)
    points: np.ndarray  # (N,3) world-frame hit points


@dataclass
class Bundle:
    """How a batch of rays maps onto a plane, so objects can be culled with 2D tests.

    Rays through a common point ``centre`` (a camera or a point light) use perspective coordinates in the
    frame ``R`` (world -> frame rotation); parallel rays (``centre`` None) use orthographic ones.
    ``coords`` (N,2) holds each ray's coordinates.
    """

    coords: np.ndarray
    R: np.ndarray
    centre: np.ndarray | None = None

    def disc(self, c: np.ndarray, r: float):
        """Conservative (cx, cy, radius) of a sphere's footprint, or None if it cannot be bounded."""
        if self.centre is None:
            q = self.R @ c
            return q[0], q[1], r
        q = self.R @ (c - self.centre)
        if q[2] - r <= 1e-6:
            return None
        # |q'/q'_z - q/q_z| <= r |q| / ((q_z - r) q_z) for any q' within r of q.
        return q[0] / q[2], q[1] / q[2], r * np.linalg.norm(q) / ((q[2] - r) * q[2])

    @classmethod
    def parallel(cls, o: np.ndarray, direction: np.ndarray) -> "Bundle":
        z = direction / np.linalg.norm(direction)
        R = np.stack([*perpendicular_basis(z), z])
        return cls((o @ R[:2].T).astype(np.float32), R)

    @classmethod
    def through(cls, points: np.ndarray, centre: np.ndarray, R: np.ndarray) -> "Bundle":
        """Rays along lines through ``centre`` and each point, seen in a frame where all have z > 0."""
        q = (points - centre) @ R.T
        return cls((q[:, :2] / q[:, 2:3]).astype(np.float32), R, centre)


def cast_objects(objects: list[RenderObject], o: np.ndarray, d: np.ndarray, bundle: Bundle,
                 t_max: np.ndarray | None = None, shade: bool = True):
    """First object hit of world rays. Returns t (N,), object index (N,, -1 none), normal, albedo.

    Each object is tested only with the rays whose bundle coordinates fall in its footprint;
    ``t_max`` limits the search (shadow rays).
    """
    n = len(o)
    t_best = np.full(n, np.inf) if t_max is None else np.asarray(t_max, dtype=float).copy()
    which = np.full(n, -1)
    normal = np.zeros((n, 3))
    local = np.zeros((n, 3))
    part = np.full(n, -1)
    X, Y = bundle.coords[:, 0], bundle.coords[:, 1]
    for k, obj in enumerate(objects):
        c = obj.T_wo[:3, 3]
        disc = bundle.disc(c, obj.shape.radius)
        if disc is None:
            sel = np.arange(n)
        else:
            cx, cy, r = disc
            sel = np.nonzero((X - cx) ** 2 + (Y - cy) ** 2 <= r * r)[0]
        if len(sel) == 0:
            continue
        R = obj.T_wo[:3, :3]
        ol = (o[sel] - c) @ R
        dl = d[sel] @ R
        t, nl, pi = obj.shape.intersect(ol, dl)
        better = t < t_best[sel]
        idx = sel[better]
        t_best[idx] = t[better]
        which[idx] = k
        normal[idx] = nl[better] @ R.T
        local[idx] = ol[better] + t[better, None] * dl[better]
        part[idx] = pi[better]
    if not shade:
        return t_best, which, None, None
    # Albedo: one call per distinct appearance (instances of a group share theirs).
    alb = np.zeros((n, 3))
    hit = np.nonzero(which >= 0)[0]
    if len(hit):
        apps, slot_of = [], {}
        max_parts = max(len(ob.appearances) for ob in objects)
        table = np.zeros((len(objects), max_parts), int)
        for k, obj in enumerate(objects):
            for j, app in enumerate(obj.appearances):
                table[k, j] = slot_of.setdefault(id(app), len(apps))
                if table[k, j] == len(apps):
                    apps.append(app)
        slot = table[which[hit], part[hit]]
        for s_idx, app in enumerate(apps):
            m = hit[slot == s_idx]
            if len(m):
                alb[m] = albedo(app, local[m])
    return t_best, which, normal, alb


def trace(objects: list[RenderObject], table: Table, o: np.ndarray, d: np.ndarray, bundle: Bundle) -> Hits:
    """Primary rays: objects, then the table top (z = 0) and the floor beyond it."""
    t, which, normal, alb = cast_objects(objects, o, d, bundle)
    ids = np.where(which >= 0, np.array([ob.object_id for ob in objects] + [0])[which], 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_table = -o[:, 2] / d[:, 2]
        t_floor = (FLOOR_Z - o[:, 2]) / d[:, 2]
    p_table = o + np.nan_to_num(t_table)[:, None] * d
    on_table = ((np.abs(p_table[:, 0]) <= table.size[0] / 2) & (np.abs(p_table[:, 1]) <= table.size[1] / 2)
                & (t_table > 0))
    use_table = on_table & (t_table < t)
    use_floor = ~on_table & (which < 0) & (t_floor > 0)
    t = np.where(use_table, t_table, np.where(use_floor, t_floor, t))
    normal[use_table | use_floor] = (0.0, 0.0, 1.0)
    if use_table.any():
        alb[use_table] = table.albedo(p_table[use_table])
    alb[use_floor] = FLOOR_ALBEDO
    points = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    return Hits(t=t, ids=ids * (~use_table), normal=normal, albedo=alb, points=points)


def occluded(objects: list[RenderObject], points: np.ndarray, normals: np.ndarray, to_light: np.ndarray,
             bundle: Bundle, t_max: np.ndarray | None = None) -> np.ndarray:
    """(N,) bool: is the segment from each surface point along ``to_light`` blocked by an object?"""
    o = points + normals * 1e-5
    t, which, _, _ = cast_objects(objects, o, to_light, bundle, t_max=t_max, shade=False)
    return which >= 0


# -- cameras -----------------------------------------------------------------------------------------

@dataclass
class PinholeCamera:
    K: np.ndarray
    width: int
    height: int
    T_cw: np.ndarray  # world-to-camera

    def rays(self, offset=(0.0, 0.0), index: np.ndarray | None = None):
        """World-frame ray origins (N,3), directions (N,3) through pixel centres (+ offset), and their bundle.

        ``index`` picks pixels by their row-major index (all pixels when None).
        """
        T_wc = invert_T(self.T_cw)
        d_cam = pixel_rays(self.K, self.width, self.height, offset)
        if index is not None:
            d_cam = d_cam[index]
        d = d_cam @ T_wc[:3, :3].T
        o = np.broadcast_to(T_wc[:3, 3], d.shape)
        return np.ascontiguousarray(o), d, Bundle(d_cam[:, :2].astype(np.float32), self.T_cw[:3, :3], T_wc[:3, 3])


@dataclass
class Projector:
    K: np.ndarray
    width: int
    height: int
    T_pw: np.ndarray  # world-to-projector
    pattern: np.ndarray = field(repr=False)  # (H,W) float32 in [0, 1]
    power: float = 1.0

    @classmethod
    def make(cls, K, width, height, T_pw, density, sigma_px, power, rng):
        n = int(density * width * height)
        img = np.zeros((height, width), np.float32)
        xs = rng.integers(0, width, n)
        ys = rng.integers(0, height, n)
        img[ys, xs] = 1.0
        img = cv2.GaussianBlur(img, (0, 0), sigma_px)
        img /= max(img.max(), 1e-6)
        return cls(K=K, width=width, height=height, T_pw=T_pw, pattern=np.clip(img, 0, 1), power=power)

    def irradiance(self, objects, hits: Hits) -> np.ndarray:
        """(N,) projected dot irradiance at hit points, with projector shadows and 1/r^2 falloff."""
        pc = transform_points(self.T_pw, hits.points)
        z = pc[:, 2]
        ok = np.isfinite(hits.t) & (z > 1e-3)
        u = np.where(ok, self.K[0, 0] * pc[:, 0] / np.where(ok, z, 1) + self.K[0, 2], -10)
        v = np.where(ok, self.K[1, 1] * pc[:, 1] / np.where(ok, z, 1) + self.K[1, 2], -10)
        dots = sample_bilinear(self.pattern, u, v, border=0.0)
        centre = invert_T(self.T_pw)[:3, 3]
        to_p = centre - hits.points
        dist = np.linalg.norm(to_p, axis=1)
        cos = np.einsum("ij,ij->i", hits.normal, to_p) / np.maximum(dist, 1e-9)
        lit = ok & (dots > 1e-3) & (cos > 0)
        idx = np.nonzero(lit)[0]
        bundle = Bundle.through(hits.points[idx], centre, self.T_pw[:3, :3])
        blocked = occluded(objects, hits.points[idx], hits.normal[idx], to_p[idx], bundle,
                           t_max=np.full(len(idx), 1.0))
        lit[idx[blocked]] = False
        return np.where(lit, self.power * dots * np.clip(cos, 0, 1) * (0.6 / np.maximum(dist, 1e-3)) ** 2, 0.0)


def shade_color(objects, hits: Hits, lighting: dict) -> np.ndarray:
    """(N,3) Lambert shading under ambient + a directional key light with shadows."""
    L = -np.asarray(lighting["key_direction"], dtype=float)
    L /= np.linalg.norm(L)
    ndl = np.clip(hits.normal @ L, 0, 1)
    vis = np.ones(len(ndl))
    if lighting.get("shadows", True):
        idx = np.nonzero((ndl > 0) & np.isfinite(hits.t))[0]
        o = hits.points[idx]
        blocked = occluded(objects, o, hits.normal[idx], np.broadcast_to(L, (len(idx), 3)), Bundle.parallel(o, L))
        vis[idx[blocked]] = 0.0
    return hits.albedo * (lighting["ambient"] + lighting["key_intensity"] * ndl * vis)[:, None]


def shade_ir(objects, hits: Hits, projector: Projector, ir_ambient: float) -> np.ndarray:
    """(N,) infrared intensity: dim ambient plus the projector's dots, on the surface's grey albedo."""
    grey = hits.albedo.mean(axis=1)
    ambient = ir_ambient * (0.6 + 0.4 * np.clip(hits.normal[:, 2], 0, 1))
    return grey * (ambient + projector.irradiance(objects, hits))
