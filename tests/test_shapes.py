"""Shapes: ray casting, signed distance, surface samples and mass properties agree with each other."""
import numpy as np
import pytest

from pipeline.shapes import Frustum, Shape, Sphere

PIN = {"type": "compound", "parts": [
    {"type": "frustum", "radius_bottom": 0.01, "radius_top": 0.018, "height": 0.04, "position": [0, 0, 0.02]},
    {"type": "sphere", "radius": 0.02, "position": [0, 0, 0.05]},
    {"type": "cylinder", "radius": 0.008, "height": 0.03, "position": [0, 0, 0.08]},
]}
SHAPES = {
    "sphere": {"type": "sphere", "radius": 0.03},
    "box": {"type": "box", "size": [0.04, 0.06, 0.02]},
    "frustum": {"type": "frustum", "radius_bottom": 0.02, "radius_top": 0.01, "height": 0.05},
    "pin": PIN,
}


def _rays(n, rng, radius=0.3):
    """Rays from a sphere of origins aimed near the object's centre."""
    o = rng.normal(size=(n, 3))
    o *= radius / np.linalg.norm(o, axis=1, keepdims=True)
    target = rng.uniform(-0.02, 0.02, size=(n, 3))
    return o, target - o


@pytest.mark.parametrize("name", SHAPES)
def test_ray_hits_lie_on_the_surface_with_outward_normals(name):
    shape = Shape.from_spec(SHAPES[name])
    rng = np.random.default_rng(0)
    o, d = _rays(4000, rng)
    t, n = shape.intersect(o, d)[:2]
    hit = np.isfinite(t)
    assert hit.mean() > 0.3
    p = o[hit] + t[hit, None] * d[hit]
    assert np.abs(shape.sdf(p)).max() < 1e-6
    # The normal faces the ray and is the sdf's gradient.
    assert (np.einsum("ij,ij->i", n[hit], d[hit]) < 0).all()
    eps = 1e-5
    grad = np.stack([(shape.sdf(p + eps * e) - shape.sdf(p - eps * e)) / (2 * eps) for e in np.eye(3)], axis=1)
    smooth = np.linalg.norm(grad, axis=1) > 0.99  # away from creases
    assert np.einsum("ij,ij->i", grad[smooth], n[hit][smooth]).min() > 0.99
    # Nothing lies between the origin and the first hit: the sdf stays positive before it.
    for s in (0.25, 0.5, 0.9):
        assert (shape.sdf(o[hit] + s * t[hit, None] * d[hit]) > -1e-9).all()
    # Rays that miss never come within the surface.
    miss = ~hit
    for s in np.linspace(0, 2, 21):
        assert (shape.sdf(o[miss] + s * d[miss]) > -1e-9).all()


@pytest.mark.parametrize("name", SHAPES)
def test_surface_samples_lie_on_the_surface(name):
    shape = Shape.from_spec(SHAPES[name])
    pts, nrm = shape.sample_surface(3000, np.random.default_rng(1))
    assert np.abs(shape.sdf(pts)).max() < 1e-6
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1, atol=1e-6)
    # Outward: a step along the normal leaves the shape.
    assert (shape.sdf(pts + 1e-4 * nrm) > 0).mean() > 0.99


def test_object_frame_is_the_centre_of_mass():
    shape = Shape.from_spec(PIN)
    rng = np.random.default_rng(2)
    p = rng.uniform(-0.1, 0.1, size=(400_000, 3))
    inside = p[shape.sdf(p) < 0]
    assert np.abs(inside.mean(axis=0)).max() < 1e-3
    sphere = Shape.from_spec(SHAPES["sphere"])
    q = rng.uniform(-0.03, 0.03, size=(400_000, 3))
    vol = (sphere.sdf(q) < 0).mean() * 0.06**3
    assert vol == pytest.approx(4 / 3 * np.pi * 0.03**3, rel=0.02)


def test_inertia_of_a_sphere():
    shape = Shape.from_spec(SHAPES["sphere"])
    assert shape.inertia_diagonal(0.15) == pytest.approx([0.4 * 0.15 * 0.03**2] * 3, rel=0.03)


def test_frustum_and_sphere_primitives():
    f = Frustum(0.02, 0.01, 0.05)
    # Exact distance to the slanted side (a radial 0.015 would be off by 2 %).
    assert f.sdf(np.array([[0.0, 0.0, 0.0]]))[0] == pytest.approx(-0.015 * 0.05 / np.hypot(0.05, 0.01), rel=1e-9)
    assert Sphere(0.03).sdf(np.array([[0.05, 0.0, 0.0]]))[0] == pytest.approx(0.02)


def test_rotational_symmetry():
    assert Shape.from_spec(SHAPES["sphere"]).rotational_symmetry() == ("spherical", None)
    assert Shape.from_spec(SHAPES["box"]).rotational_symmetry() == ("none", None)
    kind, axis = Shape.from_spec(PIN).rotational_symmetry()
    assert kind == "axial" and np.allclose(np.abs(axis), [0, 0, 1])
    tilted = {"type": "compound", "parts": [{**PIN["parts"][0], "rotation": [0.3, 0, 0]}, PIN["parts"][1]]}
    assert Shape.from_spec(tilted).rotational_symmetry() == ("none", None)  # the frustum's axis misses the sphere
    dumbbell = {"type": "compound", "parts": [{"type": "sphere", "radius": 0.01, "position": [0, 0, 0]},
                                              {"type": "sphere", "radius": 0.01, "position": [0.03, 0.04, 0]}]}
    kind, axis = Shape.from_spec(dumbbell).rotational_symmetry()
    assert kind == "axial" and np.allclose(np.abs(axis), [0.6, 0.8, 0])
