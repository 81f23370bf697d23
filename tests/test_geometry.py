"""Rigid fits shared by the masks' relocalisation, tracking's pre-alignment, labels and the gs-dynamics splat
placement (pipeline/geometry.py)."""
import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from pipeline.geometry import icp, kabsch, make_T, point_normals, point_to_plane, rotation_angle_deg


def test_kabsch_recovers_a_rigid_motion():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    R = Rotation.from_rotvec([0.2, -0.4, 0.9]).as_matrix()
    R_est, t_est = kabsch(src, src @ R.T + [0.1, -0.2, 0.3])
    assert np.allclose(R_est, R, atol=1e-9) and np.allclose(t_est, [0.1, -0.2, 0.3], atol=1e-9)


def test_icp_finds_a_partial_view_among_clutter():
    """Point-to-point ICP from 6 degrees and 8 mm off: the points of a partial, noisy view of a box land on
    the whole box although a second object stands 5 cm away (the shrinking radius leaves it unpaired)."""
    rng = np.random.default_rng(2)
    half = np.array([0.03, 0.02, 0.01])
    box = rng.uniform(-1, 1, (3000, 3)) * half
    box[np.arange(3000), rng.integers(0, 3, 3000)] = 0  # each point onto a face of the 60 x 40 x 20 mm box
    box += np.sign(rng.uniform(-1, 1, (3000, 3))) * half * (box == 0)
    clutter = rng.normal(0, 1, (1000, 3)) * 0.01 + [0.08, 0.0, 0.0]
    truth = make_T(Rotation.from_euler("xyz", [2, -3, 6], degrees=True).as_matrix(), [0.008, -0.004, 0.002])
    seen = box[box[:, 0] < 0.01]  # part of the object
    target = cKDTree(np.concatenate([box @ truth[:3, :3].T + truth[:3, 3], clutter]))
    radii = np.geomspace(0.02, 0.004, 15)
    found = icp(seen + rng.normal(0, 5e-4, seen.shape), target, np.eye(4), radii)
    assert rotation_angle_deg(found[:3, :3], truth[:3, :3]) < 0.5
    assert np.linalg.norm(found[:3, 3] - truth[:3, 3]) < 1e-3
    # Nothing within the first radius: the pose is left where it started.
    far = icp(seen + [1.0, 0, 0], target, np.eye(4), radii)
    assert np.array_equal(far, np.eye(4))


def test_point_to_plane_recovers_a_motion_and_lets_pairs_slide_along_the_surface():
    """Points on an ellipsoid paired with the same points moved by a small rigid motion: one step recovers
    it. Paired instead with points slid along a plane they lie on (a part of the surface that the source
    lacks pairs with its edge), the plane step stays put where the point-to-point fit is dragged along."""
    rng = np.random.default_rng(3)
    semi_axes = np.array([0.03, 0.02, 0.015])
    ellipsoid = rng.normal(size=(2000, 3))
    ellipsoid *= semi_axes / np.linalg.norm(ellipsoid, axis=1, keepdims=True)
    normals = ellipsoid / semi_axes**2
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    truth = make_T(Rotation.from_rotvec([0.002, -0.003, 0.001]).as_matrix(), [0.0005, -0.001, 0.0008])
    R, t = point_to_plane(ellipsoid, normals, ellipsoid @ truth[:3, :3].T + truth[:3, 3])
    assert rotation_angle_deg(R, truth[:3, :3]) < 0.01 and np.linalg.norm(t - truth[:3, 3]) < 2e-5
    plane = np.concatenate([rng.uniform(-0.02, 0.02, (500, 2)), np.zeros((500, 1))], axis=1)
    slid = plane + [0.003, 0.0, 0.0]
    normals = np.tile([0.0, 0.0, 1.0], (500, 1))
    R, t = point_to_plane(plane, normals, slid)
    assert np.allclose(R, np.eye(3), atol=1e-9) and np.allclose(t, 0, atol=1e-9)
    assert np.linalg.norm(kabsch(plane, slid)[1]) > 0.0029
    # Held by the point-to-point residuals, it moves part of the way, and as far as they ask without planes.
    assert 0 < point_to_plane(plane, normals, slid, 0.15)[1][0] < 0.003
    assert np.allclose(point_to_plane(plane, point_normals(plane, 10), slid, 1.0)[1], [0.003, 0, 0], atol=1e-6)
