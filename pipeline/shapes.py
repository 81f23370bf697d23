"""Object shapes as unions of analytic primitives.

One description serves physics (pybullet collision shapes), rendering (exact ray casting), ground truth
(signed distance, surface samples) and mass properties. Every length is in metres, in the frame of the
part (primitives are centred on their frame origin; cylinders and frusta run along z).

Ray casting takes origins ``o`` (N,3) and directions ``d`` (N,3, not necessarily unit) and returns the
ray parameter ``t`` (N,) of the first hit with t > ``T_MIN`` (``inf`` for a miss) and the outward unit
normal (N,3) at the hit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import make_T
from scipy.spatial.transform import Rotation

T_MIN = 1e-7


def _smallest_positive(*ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise smallest t > T_MIN over candidate arrays; returns (t, index of the candidate)."""
    stack = np.stack(ts)
    stack = np.where(stack > T_MIN, stack, np.inf)
    idx = np.argmin(stack, axis=0)
    return np.take_along_axis(stack, idx[None], 0)[0], idx


def _quadratic_roots(a, b, c):
    """Both roots of a t^2 + b t + c = 0 (nan where no real root or a == 0)."""
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = np.sqrt(disc)
        t0 = (-b - sq) / (2 * a)
        t1 = (-b + sq) / (2 * a)
    bad = (disc < 0) | (np.abs(a) < 1e-15)
    t0 = np.where(bad, np.nan, t0)
    t1 = np.where(bad, np.nan, t1)
    return t0, t1


def _nan_to_inf(t):
    return np.where(np.isnan(t), np.inf, t)


@dataclass
class Sphere:
    radius: float
    kind: str = "sphere"

    def intersect(self, o, d):
        a = np.einsum("ij,ij->i", d, d)
        b = 2 * np.einsum("ij,ij->i", o, d)
        c = np.einsum("ij,ij->i", o, o) - self.radius**2
        t0, t1 = _quadratic_roots(a, b, c)
        t, _ = _smallest_positive(_nan_to_inf(t0), _nan_to_inf(t1))
        p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
        n = p / self.radius
        return t, n

    def sdf(self, p):
        return np.linalg.norm(p, axis=1) - self.radius

    def bounding_radius(self):
        return self.radius

    def z_extent(self, R):
        return -self.radius, self.radius

    def sample_surface(self, n, rng):
        v = rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v * self.radius, v

    def area(self):
        return 4 * np.pi * self.radius**2

    def volume_bounds(self):
        return -np.full(3, self.radius), np.full(3, self.radius)


@dataclass
class Box:
    size: tuple  # full edge lengths (x, y, z)
    kind: str = "box"

    @property
    def half(self):
        return np.asarray(self.size, dtype=float) / 2

    def intersect(self, o, d):
        h = self.half
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            t1 = (-h - o) * inv
            t2 = (h - o) * inv
        t1 = np.nan_to_num(t1, nan=-np.inf)
        t2 = np.nan_to_num(t2, nan=np.inf)
        tlo = np.minimum(t1, t2)
        thi = np.maximum(t1, t2)
        axis = np.argmax(tlo, axis=1)
        tnear = tlo[np.arange(len(o)), axis]
        tfar = thi.min(axis=1)
        hit = (tnear <= tfar) & (tfar > T_MIN)
        t = np.where(hit, np.where(tnear > T_MIN, tnear, tfar), np.inf)
        p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
        # Normal: the face whose plane the hit lies on (largest scaled coordinate).
        axis = np.argmax(np.abs(p) / h, axis=1)
        n = np.zeros_like(p)
        n[np.arange(len(p)), axis] = np.sign(p[np.arange(len(p)), axis])
        return t, n

    def sdf(self, p):
        q = np.abs(p) - self.half
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)

    def bounding_radius(self):
        return float(np.linalg.norm(self.half))

    def z_extent(self, R):
        r = float(np.abs(R[2]) @ self.half)
        return -r, r

    def sample_surface(self, n, rng):
        h = self.half
        areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]]).repeat(2)
        face = rng.choice(6, size=n, p=areas / areas.sum())
        axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
        p = rng.uniform(-1, 1, size=(n, 3)) * h
        p[np.arange(n), axis] = sign * h[axis]
        nrm = np.zeros((n, 3))
        nrm[np.arange(n), axis] = sign
        return p, nrm

    def area(self):
        h = self.half
        return 8 * (h[0] * h[1] + h[1] * h[2] + h[0] * h[2])

    def volume_bounds(self):
        return -self.half, self.half


@dataclass
class Frustum:
    """Truncated cone along z: radius ``radius_bottom`` at z = -height/2, ``radius_top`` at +height/2.

    A cylinder is a frustum with equal radii.
    """

    radius_bottom: float
    radius_top: float
    height: float
    kind: str = "frustum"

    def _ab(self):
        h = self.height / 2
        b = (self.radius_top - self.radius_bottom) / self.height  # dr/dz
        a = self.radius_bottom + b * h  # radius at z = 0
        return a, b, h

    def intersect(self, o, d):
        a, b, h = self._ab()
        # Side: x^2 + y^2 = (a + b z)^2.
        A = d[:, 0] ** 2 + d[:, 1] ** 2 - (b * d[:, 2]) ** 2
        B = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] - (a + b * o[:, 2]) * b * d[:, 2])
        C = o[:, 0] ** 2 + o[:, 1] ** 2 - (a + b * o[:, 2]) ** 2
        roots = []
        for t in _quadratic_roots(A, B, C):
            z = o[:, 2] + t * d[:, 2]
            ok = (np.abs(z) <= h) & (a + b * z >= 0)
            roots.append(np.where(ok, _nan_to_inf(t), np.inf))
        caps = []
        for zc, rc in ((-h, self.radius_bottom), (h, self.radius_top)):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (zc - o[:, 2]) / d[:, 2]
            p = o + np.nan_to_num(t)[:, None] * d
            ok = np.isfinite(t) & (p[:, 0] ** 2 + p[:, 1] ** 2 <= rc * rc)
            caps.append(np.where(ok, t, np.inf))
        t, which = _smallest_positive(roots[0], roots[1], caps[0], caps[1])
        p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
        n = np.stack([p[:, 0], p[:, 1], -(a + b * p[:, 2]) * b], axis=1)
        n[which == 2] = (0, 0, -1)
        n[which == 3] = (0, 0, 1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return t, n

    def sdf(self, p):
        # Exact capped-cone distance in the (radial, axial) half-plane.
        h, r1, r2 = self.height / 2, self.radius_bottom, self.radius_top
        qx = np.linalg.norm(p[:, :2], axis=1)
        qy = p[:, 2]
        k2x, k2y = r2 - r1, 2 * h
        cax = qx - np.minimum(qx, np.where(qy < 0, r1, r2))
        cay = np.abs(qy) - h
        s = np.clip(((r2 - qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y), 0, 1)
        cbx = qx - r2 + k2x * s
        cby = qy - h + k2y * s
        sign = np.where((cbx < 0) & (cay < 0), -1.0, 1.0)
        return sign * np.sqrt(np.minimum(cax**2 + cay**2, cbx**2 + cby**2))

    def bounding_radius(self):
        return float(np.hypot(max(self.radius_bottom, self.radius_top), self.height / 2))

    def z_extent(self, R):
        # Support of a circle of radius r centred at c on axis u, along world z.
        u = R[:, 2]
        s = np.sqrt(max(0.0, 1 - u[2] ** 2))
        h = self.height / 2
        ends = [-h * u[2] - self.radius_bottom * s, -h * u[2] + self.radius_bottom * s,
                h * u[2] - self.radius_top * s, h * u[2] + self.radius_top * s]
        return min(ends), max(ends)

    def sample_surface(self, n, rng):
        a, b, h = self._ab()
        slant = np.sqrt(1 + b * b)
        side = np.pi * (self.radius_bottom + self.radius_top) * self.height * slant
        cap_b, cap_t = np.pi * self.radius_bottom**2, np.pi * self.radius_top**2
        areas = np.array([side, cap_b, cap_t])
        which = rng.choice(3, size=n, p=areas / areas.sum())
        phi = rng.uniform(0, 2 * np.pi, n)
        # Side: z with density proportional to radius (inverse-CDF of a linear density).
        rmax = max(self.radius_bottom, self.radius_top)
        z = rng.uniform(-h, h, n)
        for _ in range(8):  # rejection, vectorised: redraw the rejected ones
            rej = rng.uniform(0, rmax, n) > (a + b * z)
            if not rej.any():
                break
            z[rej] = rng.uniform(-h, h, rej.sum())
        r = np.where(which == 0, a + b * z, np.sqrt(rng.uniform(0, 1, n)))
        r = np.where(which == 1, r * self.radius_bottom, r)
        r = np.where(which == 2, r * self.radius_top, r)
        z = np.where(which == 1, -h, np.where(which == 2, h, z))
        p = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
        nrm = np.stack([np.cos(phi), np.sin(phi), np.full(n, -b)], axis=1) / slant
        nrm[which == 1] = (0, 0, -1)
        nrm[which == 2] = (0, 0, 1)
        return p, nrm

    def area(self):
        b = (self.radius_top - self.radius_bottom) / self.height
        return (np.pi * (self.radius_bottom + self.radius_top) * self.height * np.sqrt(1 + b * b)
                + np.pi * (self.radius_bottom**2 + self.radius_top**2))

    def volume_bounds(self):
        r = max(self.radius_bottom, self.radius_top)
        return np.array([-r, -r, -self.height / 2]), np.array([r, r, self.height / 2])


Primitive = Sphere | Box | Frustum


def primitive_from_spec(spec: dict) -> Primitive:
    kind = spec["type"]
    if kind == "sphere":
        return Sphere(float(spec["radius"]))
    if kind == "box":
        return Box(tuple(float(s) for s in spec["size"]))
    if kind == "cylinder":
        return Frustum(float(spec["radius"]), float(spec["radius"]), float(spec["height"]))
    if kind == "frustum":
        return Frustum(float(spec["radius_bottom"]), float(spec["radius_top"]), float(spec["height"]))
    raise ValueError(f"unknown primitive type {kind!r}")


@dataclass
class Part:
    primitive: Primitive
    T: np.ndarray  # (4,4) part-to-object transform
    spec: dict = field(default_factory=dict)  # the description it came from (for artifacts)


class Shape:
    """A union of primitives, in an object frame whose origin is the centre of mass."""

    def __init__(self, parts: list[Part], centred: bool = False):
        """``centred``: the parts are already placed about the centre of mass (shapes read back from an
        artifact); otherwise they are moved so the object frame's origin is the centre of mass."""
        self.parts = parts
        self._mass_properties(move=not centred)

    @classmethod
    def from_artifact(cls, parts: list[dict]) -> "Shape":
        """Rebuild a shape from the part list a ground-truth artifact stores (``spec`` + ``T_object_part``)."""
        return cls([Part(primitive_from_spec(p), np.asarray(p["T_object_part"]), p) for p in parts], centred=True)

    @classmethod
    def from_spec(cls, spec: dict) -> "Shape":
        """``spec`` is a primitive ({type: sphere, radius: ...}) or {type: compound, parts: [...]}."""
        if spec["type"] != "compound":
            return cls([Part(primitive_from_spec(spec), np.eye(4), dict(spec))])
        parts = []
        for ps in spec["parts"]:
            R = Rotation.from_euler("xyz", ps.get("rotation", [0, 0, 0])).as_matrix()
            parts.append(Part(primitive_from_spec(ps), make_T(R, np.asarray(ps.get("position", [0, 0, 0]), float)), dict(ps)))
        return cls(parts)

    # -- mass properties -------------------------------------------------------------------------
    def _grid(self, n=48):
        """Regular (n^3, 3) grid of cell centres over the shape's bounding box."""
        lo = np.full(3, np.inf)
        hi = np.full(3, -np.inf)
        for part in self.parts:
            a, b = part.primitive.volume_bounds()
            corners = np.array([[x, y, z] for x in (a[0], b[0]) for y in (a[1], b[1]) for z in (a[2], b[2])])
            corners = corners @ part.T[:3, :3].T + part.T[:3, 3]
            lo, hi = np.minimum(lo, corners.min(0)), np.maximum(hi, corners.max(0))
        axes = [np.linspace(lo[i], hi[i], n + 1)[:-1] + (hi[i] - lo[i]) / (2 * n) for i in range(3)]  # cell centres
        return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    def _mass_properties(self, move: bool):
        g = self._grid()
        inside = g[self.sdf(g) < 0]
        com = inside.mean(axis=0) if move else np.zeros(3)
        for part in self.parts:
            part.T = part.T.copy()
            part.T[:3, 3] -= com
        inside = inside - inside.mean(axis=0)
        self.unit_inertia = (np.eye(3) * (inside**2).sum(1).sum() - inside.T @ inside) / len(inside)
        self.radius = max(np.linalg.norm(p.T[:3, 3]) + p.primitive.bounding_radius() for p in self.parts)

    def inertia_diagonal(self, mass: float) -> np.ndarray:
        """Principal moments (kg m^2) about the object axes; shapes are built axis-aligned."""
        return mass * np.diag(self.unit_inertia)

    def rotational_symmetry(self) -> tuple[str, np.ndarray | None]:
        """The shape's continuous rotational symmetry: ("spherical", None) for concentric spheres, ("axial",
        unit (3,) object-frame axis) for a solid of revolution (spheres and frusta on one line), ("none",
        None) otherwise (a box's discrete symmetries are not counted; nor is texture)."""
        centres, axes = [], []
        for part in self.parts:
            if isinstance(part.primitive, Box):
                return "none", None
            centres.append(part.T[:3, 3])
            if isinstance(part.primitive, Frustum):
                axes.append(part.T[:3, 2])
        offsets = np.array(centres) - centres[0]
        tol = 1e-6
        if not axes:
            if np.abs(offsets).max() < tol:
                return "spherical", None
            axes = [offsets[np.argmax(np.linalg.norm(offsets, axis=1))]]
        axis = axes[0] / np.linalg.norm(axes[0])
        parallel = all(np.linalg.norm(np.cross(a, axis)) < tol for a in axes)
        on_axis = np.linalg.norm(np.cross(offsets, axis), axis=1).max() < tol
        return ("axial", axis) if parallel and on_axis else ("none", None)

    # -- geometry --------------------------------------------------------------------------------
    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (m) of (N,3) object-frame points to the union (exact outside)."""
        d = np.full(len(p), np.inf)
        for part in self.parts:
            R, t = part.T[:3, :3], part.T[:3, 3]
            d = np.minimum(d, part.primitive.sdf((p - t) @ R))
        return d

    def intersect(self, o: np.ndarray, d: np.ndarray):
        """First hit of object-frame rays; returns t (N,), normal (N,3) in object frame, part index (N,)."""
        t_best = np.full(len(o), np.inf)
        n_best = np.zeros((len(o), 3))
        part_idx = np.full(len(o), -1)
        dd = np.einsum("ij,ij->i", d, d)
        for i, part in enumerate(self.parts):
            R, tr = part.T[:3, :3], part.T[:3, 3]
            if len(self.parts) > 1:  # cull with the part's bounding sphere
                oc = tr - o
                proj = np.einsum("ij,ij->i", oc, d)
                miss2 = np.einsum("ij,ij->i", oc, oc) - proj * proj / dd
                sel = np.nonzero(miss2 <= part.primitive.bounding_radius() ** 2)[0]
            else:
                sel = slice(None)
            t, n = part.primitive.intersect((o[sel] - tr) @ R, d[sel] @ R)
            idx = np.arange(len(o))[sel]
            better = t < t_best[idx]
            idx = idx[better]
            t_best[idx] = t[better]
            n_best[idx] = n[better] @ R.T
            part_idx[idx] = i
        return t_best, n_best, part_idx

    def z_extent(self, R: np.ndarray) -> tuple[float, float]:
        """Lowest and highest world z of the shape rotated by R about its centre of mass."""
        lo, hi = np.inf, -np.inf
        for part in self.parts:
            Rw = R @ part.T[:3, :3]
            c = (R @ part.T[:3, 3])[2]
            a, b = part.primitive.z_extent(Rw)
            lo, hi = min(lo, c + a), max(hi, c + b)
        return lo, hi

    def sample_surface(self, n: int, rng: np.random.Generator):
        """(n,3) points and normals on the outer surface of the union, area-weighted."""
        areas = np.array([p.primitive.area() for p in self.parts])
        counts = rng.multinomial(int(n * 1.6) + 64, areas / areas.sum())
        pts, nrms = [], []
        for i, (part, k) in enumerate(zip(self.parts, counts)):
            p, nr = part.primitive.sample_surface(k, rng)
            R, t = part.T[:3, :3], part.T[:3, 3]
            p, nr = p @ R.T + t, nr @ R.T
            keep = np.ones(len(p), bool)
            for j, other in enumerate(self.parts):  # drop what lies inside another part
                if j != i:
                    Ro, to = other.T[:3, :3], other.T[:3, 3]
                    keep &= other.primitive.sdf((p - to) @ Ro) > 1e-6
            pts.append(p[keep])
            nrms.append(nr[keep])
        pts, nrms = np.concatenate(pts), np.concatenate(nrms)
        sel = rng.permutation(len(pts))[:n]
        return pts[sel], nrms[sel]
