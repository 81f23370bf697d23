"""Masks (offline backend): clustering, rigid tracking of ids, the stage on an episode, and bad input."""
import json
import re
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from pipeline.artifact import ArtifactWriter, open_artifact, put
from pipeline.geometry import intrinsics_from_hfov, look_at_T_cw, point_normals, project
from pipeline.masks import (MasksError, RigidObjects, TableParallax, chromaticity_bins, colour_log_likelihood,
                            colour_relabel, connected_objects, first_frame_hull, front_ids, front_model_ids,
                            front_surfel_ids, guided_relabel, model_surfels, revolved_points, object_colour_probability, reassign_by_models,
                            split_by_colour, visual_hull, write_masks)
from pipeline.quality.masks import mask_figures

from .conftest import run_module

CFG = {"voxel_m": 0.006, "min_points": 20, "track_radius_m": 0.015, "reattach_radius_m": 0.05,
       "icp_iterations": 8, "icp_radius_m": 0.03, "relocalise_radius_m": 0.1, "label_sigma_m": 0.01,
       "camera_share": 0.1, "surfel_neighbours": 40, "surfel_radius_scale": 0.7, "surfel_smooth_neighbours": 12,
       "icp_fine_iterations": 10, "icp_fine_radius_m": 0.005, "icp_fine_gate_m": 0.002, "icp_fine_point_weight": 0.15}


def _box(centre, rng, n=400, size=(0.04, 0.04, 0.08)):
    return rng.uniform(-0.5, 0.5, (n, 3)) * size + centre


def _two_cameras(points):
    """(N,) camera indices: every other point seen by the second of two cameras."""
    return np.arange(len(points)) % 2


def _box_views(box, K, cameras, shape=(48, 64)):
    """(C,H,W) silhouettes of (N,3) points, a box's dense sample, in each camera: their pixels' bounding box."""
    silhouettes = np.zeros((len(cameras), *shape), bool)
    for c, T in enumerate(cameras):
        uv, _ = project(K, T, box)
        u, v = np.rint(uv).astype(int).T
        silhouettes[c, v.min():v.max() + 1, u.min():u.max() + 1] = True
    return silhouettes


PIN_K = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])  # a 64x48 camera at the world origin


def _pin_plane(first, last, z):
    """(N,3) one point per pixel centre of rows 10-39, columns first..last, at depth z in front of PIN_K."""
    rows, cols = np.mgrid[10:40, 0:64]
    sel = (cols >= first) & (cols <= last)
    return np.stack([(cols[sel] - 32) / 100 * z, (rows[sel] - 24) / 100 * z, np.full(sel.sum(), z)], 1)


def test_connected_objects_separates_and_drops_noise():
    rng = np.random.default_rng(0)
    pts = np.concatenate([_box([0, 0, 0.05], rng, 3000), _box([0.1, 0, 0.05], rng, 3000),
                          rng.uniform(0.3, 0.31, (5, 3))])
    labels = connected_objects(pts, 0.006, 20)
    assert len(set(labels[:3000])) == 1 and len(set(labels[3000:6000])) == 1
    assert {labels[0], labels[3000]} == {1, 2}
    assert (labels[6000:] == 0).all()


def _cube_colours(points, colours, rng):
    """(N,3) uint8 colours: the noisy colour of the level (4.5 cm cubes stacked on z) each point is at."""
    level = np.clip((points[:, 2] / 0.045).astype(int), 0, len(colours) - 1)
    base = np.asarray(colours, float)[level] * rng.uniform(0.5, 1.0, (len(points), 1))  # shading
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def test_split_by_colour_cuts_a_stack_but_not_a_patterned_object():
    """A stack of three touching cubes (red, green, blue; offset as they would stand) becomes three
    objects; a pin-like column with red bands on white, and a blue/yellow checked box, stay whole."""
    rng = np.random.default_rng(5)
    stack = np.concatenate([_box([0.005 * i, -0.004 * i, 0.0225 + 0.045 * i], rng, 1500, (0.045,) * 3)
                            for i in range(3)])
    stack_colour = _cube_colours(stack, [[200, 40, 40], [40, 150, 60], [40, 70, 190]], rng)
    column = _box([0.2, 0, 0.06], rng, 3000, (0.03, 0.03, 0.12))
    band = ((column[:, 2] > 0.05) & (column[:, 2] < 0.08) & (column[:, 2] % 0.012 < 0.006))
    column_colour = np.where(band[:, None], [200, 30, 30], [235, 235, 230]).astype(np.uint8)
    checked = _box([-0.2, 0, 0.03], rng, 2000, (0.06, 0.06, 0.06))
    check = (np.floor(checked / 0.02).astype(int).sum(axis=1) % 2).astype(bool)
    checked_colour = np.where(check[:, None], [30, 40, 160], [230, 200, 40]).astype(np.uint8)
    points = np.concatenate([stack, column, checked])
    bins = chromaticity_bins(np.concatenate([stack_colour, column_colour, checked_colour]))
    labels = split_by_colour(points, bins, connected_objects(points, 0.006, 20), 100, 0.4)
    for i in range(3):  # each cube one label, all different
        cube = labels[1500 * i:1500 * (i + 1)]
        assert (cube == np.bincount(cube).argmax()).mean() > 0.97, i
    assert len({np.bincount(labels[1500 * i:1500 * (i + 1)]).argmax() for i in range(3)}) == 3
    assert len(set(labels[4500:7500])) == 1 and len(set(labels[7500:])) == 1
    assert len(set(labels)) == 5


def test_colour_gives_a_face_missing_from_the_model_to_its_own_object():
    """A red cube on a green one tips over: its underside, absent from its model (hidden at the first
    frame), is nearer the green cube's top than any red model point, and goes to the red cube by colour.
    Were both cubes grey, it would go to the nearer one."""
    rng = np.random.default_rng(6)
    green, red = _box([0, 0, 0.0225], rng, 2000, (0.045,) * 3), _box([0, 0, 0.0675], rng, 2000, (0.045,) * 3)
    red_seen = red[red[:, 2] > 0.06]  # the underside and the lowest 15 mm were hidden
    points = np.concatenate([green, red_seen])
    labels = np.repeat([1, 2], [len(green), len(red_seen)])
    underside = rng.uniform(-0.0225, 0.0225, (200, 3)) * [1, 1, 0] + [0, 0, 0.047]
    for colours, underside_colour, expected in (([[40, 150, 60], [200, 40, 40]], [200, 40, 40], 2),
                                                ([[128, 128, 128], [128, 128, 128]], [128, 128, 128], 1)):
        objects = RigidObjects(CFG)
        objects.add(points, chromaticity_bins(np.asarray(colours)[labels - 1]), labels)
        ids, _ = objects.assign(underside, chromaticity_bins(np.tile(underside_colour, (200, 1))), 0.03)
        assert (ids == expected).mean() > 0.95, colours


def test_colour_relabel_returns_a_smeared_seam_to_the_object_of_its_colour():
    """A yellow cube stands behind a blue one; the depth smeared the blue cube's id over the yellow cube's
    edge. The smear's pixels within the radius of a yellow-labelled pixel go back to yellow by colour,
    those further in keep the depth's id (one pass), and between two grey objects nothing moves."""
    rng = np.random.default_rng(3)
    for colours, grey in (([[220, 180, 30], [40, 70, 190]], False), ([[128, 128, 128], [120, 120, 120]], True)):
        colour = np.zeros((20, 40, 3))
        colour[:, :20], colour[:, 20:] = colours[0], colours[1]
        colour = np.clip(colour + rng.normal(0, 4, colour.shape), 0, 255).astype(np.uint8)
        true = np.repeat(np.where(np.arange(40) < 20, 1, 2)[None], 20, axis=0).astype(np.uint16)
        ids = true.copy()
        ids[:, 14:20] = 2  # the smear, six pixels wide
        bins = chromaticity_bins(colour.reshape(-1, 3)).reshape(20, 40)
        models = {k: colour_log_likelihood(bins[true == k]) for k in (1, 2)}
        out = colour_relabel(ids, bins, models, radius_px=3, margin=1.0)
        assert (out == ids).all() if grey else (out[:, 14:17] == 1).all() and (out[:, 17:20] == 2).all(), colours
        assert (out[:, :14] == 1).all() and (out[:, 20:] == 2).all()


def test_guided_relabel_moves_a_boundary_onto_the_image_edge_and_nothing_else():
    """Two white objects, one in shade: the ids put their boundary a pixel into the lit one and hold one
    stray pixel. The guided filter moves the boundary onto the image's edge and the stray pixel back,
    keeps the background where it was, and where the image shows no edge leaves the boundary alone."""
    rng = np.random.default_rng(4)
    colour = np.full((24, 40, 3), 150.0)
    colour[:, 20:] = 225  # object 2, lit
    colour[:4] = [180, 140, 100]  # the table above both
    colour = np.clip(colour + rng.normal(0, 1.5, colour.shape), 0, 255).astype(np.uint8)
    true = np.zeros((24, 40), np.uint16)
    true[4:, :20], true[4:, 20:] = 1, 2
    ids = true.copy()
    ids[4:, 20] = 1  # the shaded object spreads a pixel over the lit one
    ids[12, 30] = 1
    out = guided_relabel(ids, colour, radius_px=2, eps=0.01)
    assert (out == true).all()
    flat = np.full_like(colour, 200)
    flat[:4] = colour[:4]
    assert (guided_relabel(ids, flat, radius_px=2, eps=0.01)[4:, 19:22] == ids[4:, 19:22]).all()
    assert (guided_relabel(ids, colour, radius_px=0, eps=0.01) == ids).all()
    # With the models drawn along 3 x 3 rays a pixel: where the image shows no edge, the boundary goes where
    # the models put it, if they cover most of the pixel; a third of it does not move it.
    for covered_columns, expected in ((3, 2), (1, 1)):
        drawn = np.repeat(np.repeat(true, 3, axis=0), 3, axis=1)
        drawn[12:, 60 + covered_columns:63] = 1  # column 20's rays: the first covered_columns are object 2's
        out = guided_relabel(ids, flat, radius_px=2, eps=0.01, drawn=drawn, drawn_weight=0.3)
        assert (out[4:, 20] == expected).all() and (out[4:, 19] == 1).all() and (out[4:, 21] == 2).all()
    assert (guided_relabel(ids, flat, 2, 0.01, drawn, 0.0) == guided_relabel(ids, flat, 2, 0.01)).all()


def test_models_give_a_depth_smear_back_to_the_object_behind():
    """Pin A (columns 20-29, 1 m) stands in front of pin B (columns 25-44, 1.2 m), both of one colour; the
    depth smeared A's id three pixels over B (columns 30-32). There B's model is in front, so those pixels
    go back to B; A keeps its id where its model shows, also over B's. If B's colour did not fit those
    pixels, they would stay A."""
    points = np.concatenate([_pin_plane(20, 29, 1.0), _pin_plane(25, 44, 1.2)])
    point_ids = np.repeat([1, 2], [10 * 30, 20 * 30])
    front = front_model_ids(points, point_ids, PIN_K, np.eye(4), (48, 64))
    assert (front[10:40, 20:30] == 1).all() and (front[10:40, 30:45] == 2).all() and (front[:10] == 0).all()
    view = np.zeros((48, 64), np.uint16)
    view[10:40, 20:33], view[10:40, 33:45] = 1, 2
    bins = np.zeros((48, 64), int)
    for log_colour_b, expected_smear in ((np.zeros(144), 2), (np.full(144, -5.0), 1)):
        out = reassign_by_models(view, front, bins, {1: np.zeros(144), 2: log_colour_b}, 1.0)
        assert (out[10:40, 20:30] == 1).all() and (out[10:40, 30:33] == expected_smear).all()
        assert (out[10:40, 33:45] == 2).all() and (out[:10] == 0).all()


def test_models_drawn_as_discs_end_where_the_pixel_centres_leave_them():
    """A near plane (1 m) whose right edge lies at u = 10.7 before a far one (1.5 m), both dense (0.1 px
    apart): drawn as discs, the edge falls between the centres of pixels 10 and 11 as the ground truth's
    rays have it; drawn as points, pixel 11 (whose left 0.2 px the near plane covers) goes to the near
    plane. Discs facing across the ray (a surface seen edge-on at an outline) paint nothing."""
    def plane(u_first, u_last, z, step=0.1):
        u, v = np.meshgrid(np.arange(u_first, u_last + 1e-9, step), np.arange(9.5, 20.5 + 1e-9, step))
        return np.stack([(u.ravel() - 32) / 100 * z, (v.ravel() - 24) / 100 * z, np.full(u.size, z)], 1)

    near, far = plane(5.0, 10.7, 1.0), plane(0.0, 30.0, 1.5)
    centres = np.concatenate([near, far])
    ids = np.repeat([1, 2], [len(near), len(far)])
    radii = np.repeat([0.1 * 1.0 / 100, 0.1 * 1.5 / 100], [len(near), len(far)])  # 0.1 px at each depth
    facing = np.tile([0.0, 0.0, 1.0], (len(centres), 1))
    discs = front_surfel_ids(centres, facing, radii, ids, PIN_K, np.eye(4), (48, 64))
    points = front_model_ids(centres, ids, PIN_K, np.eye(4), (48, 64))
    assert (discs[10:21, 5:11] == 1).all() and (discs[10:21, 11:31] == 2).all() and (discs[10:21, :5] == 2).all()
    assert (discs[:10] == 0).all() and (discs[21:] == 0).all() and (discs[10:21, 31:] == 0).all()
    assert (points[10:21, 11] == 1).all()  # the points' half pixel
    # Three by three rays a pixel: the middle ones are the pixel centres' rays; of pixel 11's columns of rays
    # (u = 10.67, 11 and 11.33) the near plane covers the first.
    rays = front_ids((centres, facing, radii, ids), np.zeros((0, 3)), np.zeros(0, int), PIN_K, np.eye(4),
                     (48, 64), supersample=3)
    assert rays.shape == (144, 192) and (rays[1::3, 1::3] == discs).all()
    assert (rays[30:63, 33] == 1).all() and (rays[30:63, 34:36] == 2).all()
    edge_on = np.cross(near, [0.0, 1.0, 0.0])  # the near discs turned to face across their lines of sight
    edge_on /= np.linalg.norm(edge_on, axis=1, keepdims=True)
    assert not front_surfel_ids(near, edge_on, radii[:len(near)], ids[:len(near)], PIN_K, np.eye(4), (48, 64)).any()
    # model_surfels: the plane's own normal, and the grid's spacing (1 cm) times the scale at its edges and
    # corners too (their own fourth nearest points lie 1.4 and 2 cm away).
    plane = _pin_plane(20, 29, 1.0)
    centres, normals, r = model_surfels(plane, 40, 0.7, 12)
    assert np.allclose(np.abs(normals[:, 2]), 1.0) and np.allclose(r, 0.007) and np.allclose(centres, plane)


def test_model_discs_are_centred_on_the_surface_their_noisy_points_scatter_around():
    """A 2 cm ball's model points scattered 1 mm across its surface (the depth's noise): the discs'
    centres scatter half as far about the surface, at its radius, and each stays where its point was
    along the surface. Not smoothed (0 neighbours), they are the points."""
    rng = np.random.default_rng(5)
    directions = rng.normal(size=(3000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    points = directions * (0.02 + rng.normal(0, 0.001, (3000, 1)))
    centres, normals, _ = model_surfels(points, 40, 0.7, 12)
    radius = np.linalg.norm(centres, axis=1)
    assert np.std(radius - 0.02) < 0.0005 and abs(np.mean(radius) - 0.02) < 0.0003
    along = points - centres
    assert np.allclose(np.abs(np.einsum("ij,ij->i", along, normals)), np.linalg.norm(along, axis=1))
    assert np.allclose(model_surfels(points, 40, 0.7, 0)[0], points)


def test_objects_found_after_the_first_frame_are_drawn_too():
    """An object that appears later (``label`` adds it) gets its discs when the models are next drawn."""
    objects = RigidObjects(CFG)
    objects.add(_pin_plane(20, 29, 1.0), np.zeros(300, int), np.ones(300, int))
    objects.make_surfels()
    objects.add(_pin_plane(40, 49, 1.2), np.zeros(300, int), np.full(300, 2))
    centres, normals, radii, ids = objects.posed_surfels()
    assert len(centres) == len(normals) == len(radii) == 600 and set(ids) == {1, 2} and (radii > 0).all()


def test_a_partial_view_of_a_surface_of_revolution_is_completed_and_a_box_is_not():
    """A pin-like surface (radius 20-30 mm along a 10 cm axis, tilted) seen from one side only, its points
    scattered 0.5 mm across it: the ring points lie on the true surface, on the side never seen. A box's
    points do not lie on a surface of revolution: no ring points."""
    rng = np.random.default_rng(8)
    h = rng.uniform(0, 0.1, 3000)
    angle = rng.uniform(-np.pi / 2, np.pi / 2, 3000)  # the half facing +x
    radius = 0.025 + 0.005 * np.sin(h * 60)
    local = np.stack([radius * np.cos(angle), radius * np.sin(angle), h], 1)
    tilt = Rotation.from_euler("xy", [20, -35], degrees=True).as_matrix()
    origin = np.array([0.1, -0.05, 0.02])
    points = local @ tilt.T + origin
    points += rng.normal(0, 0.0005, points.shape)
    ring, share = revolved_points(points, point_normals(points, 40), 0.002, 0.0015, 0.6)
    assert share > 0.8 and len(ring) > 1000
    back = (ring - origin) @ tilt
    ring_h = back[:, 2]
    ring_r = np.linalg.norm(back[:, :2], axis=1)
    assert np.median(np.abs(ring_r - (0.025 + 0.005 * np.sin(ring_h * 60)))) < 0.0005
    assert (back[:, 0] < -0.01).mean() > 0.4  # most of it on the far side
    box = rng.uniform(-0.5, 0.5, (3000, 3)) * [0.04, 0.06, 0.08]
    box[np.arange(3000), rng.integers(0, 3, 3000)] = 0
    box += np.sign(rng.uniform(-1, 1, (3000, 3))) * [0.02, 0.03, 0.04] * (box == 0)
    ring, share = revolved_points(box, point_normals(box, 40), 0.002, 0.0015, 0.6)
    assert share < 0.6 and len(ring) == 0
    # A flat patch (all normals parallel) fits no axis: its share (0.27-0.37 over seeds) is under the threshold
    # and nothing is added; with no threshold the rings would stand up to 3 cm out of its plane.
    patch = np.concatenate([rng.uniform(-0.02, 0.02, (500, 2)), np.zeros((500, 1))], axis=1)
    ring, share = revolved_points(patch, point_normals(patch, 40), 0.002, 0.0015, 0.6)
    assert share < 0.5 and len(ring) == 0


def test_a_completed_model_is_tracked_onto_the_side_its_first_frame_hid():
    """A pin-like model seen from +x only, then a frame that shows its -x side, the pin moved by 6 mm: paired
    with its completion as well (``RigidObjects.surface``) the model lands within a millimetre; paired
    with the seen half alone, the half is pulled onto the other side, centimetres off."""
    rng = np.random.default_rng(9)

    def half(facing, n=3000):
        h = rng.uniform(0, 0.1, n)
        angle = rng.uniform(-np.pi / 2, np.pi / 2, n) + facing
        radius = 0.025 + 0.005 * np.sin(h * 60)
        return np.stack([radius * np.cos(angle), radius * np.sin(angle), h + 0.01], 1) + rng.normal(0, 0.0005, (n, 3))

    seen, shift = half(0.0), np.array([0.006, -0.004, 0.0])
    frame = half(np.pi) + shift
    grey = np.zeros(len(frame), int)
    errors = []
    for complete in (True, False):
        objects = RigidObjects(CFG)
        objects.add(seen, grey, np.ones(len(seen), int))
        if complete:
            objects.completions[1], _ = revolved_points(seen, point_normals(seen, 40), 0.002, 0.0015, 0.6)
            assert objects.complete == [1] and len(objects.surface(1)) > len(seen)
        objects.track(frame, grey, _two_cameras(frame))
        R, t = objects.poses[1]
        axis_point = np.array([0.0, 0.0, 0.06])  # on the pin's axis, half way up
        errors.append(np.linalg.norm(axis_point @ R.T + t - (axis_point + shift)))
    assert errors[0] < 0.001 and errors[1] > 0.01, errors


def test_models_are_cut_to_the_silhouettes_of_all_views():
    """A model fattened along camera 0's rays (a stereo edge smear: points beside the box at its depth)
    keeps its true points; the smear projects onto the table in camera 1, which looks from above, and is
    dropped."""
    K = np.array([[200.0, 0, 32], [0, 200.0, 24], [0, 0, 1]])
    T0 = np.eye(4)
    T1 = look_at_T_cw([0.0, -1.0, 1.0], [0.0, 0.0, 1.0])
    box = np.stack(np.meshgrid(*[np.linspace(-0.05, 0.05, 6)] * 3, indexing="ij"), -1).reshape(-1, 3) + [0, 0, 1]
    smear = box[np.abs(box[:, 0] - 0.05) < 1e-9] + [0.02, 0, 0]  # beside the box's +x face, in front
    objects = RigidObjects(CFG)
    objects.add(np.concatenate([box, smear]), np.zeros(len(box) + len(smear), int),
                np.ones(len(box) + len(smear), int))
    silhouettes = _box_views(box, K, (T0, T1))
    silhouettes[0] = cv2.dilate(silhouettes[0].astype(np.uint8), np.ones((13, 13), np.uint8)) > 0  # the smear
    uv, _ = project(K, T1, smear)
    assert not silhouettes[1][tuple(np.rint(uv[:, ::-1]).astype(int).T)].any()  # the test's premise
    objects.cut_to_silhouettes(silhouettes, np.stack([K, K]), np.stack([T0, T1]))
    assert len(objects.models[1]) == len(box) and np.allclose(np.sort(objects.models[1], 0), np.sort(box, 0))


def test_visual_hull_holds_the_object_and_drops_what_a_view_sees_through():
    """A 10 cm box seen by a camera in front of it and one from its side: of a grid of 1 cm cells the hull
    keeps every cell of the box and none 3 cm beyond it, and loses the cells of the box's left half where
    the front camera's depth lies 20 cm behind them (free space: in a scene, the gap between two objects)."""
    K = np.array([[200.0, 0, 32], [0, 200.0, 24], [0, 0, 1]])
    cameras = (np.eye(4), look_at_T_cw([0.0, -1.0, 1.0], [0.0, 0.0, 1.0]))
    grid = np.stack(np.meshgrid(*[np.arange(-0.095, 0.1, 0.01)] * 3, indexing="ij"), -1).reshape(-1, 3) + [0, 0, 1]
    box = grid[np.abs(grid - [0, 0, 1]).max(axis=1) < 0.05]
    silhouettes = _box_views(box, K, cameras)
    depths = np.zeros((2, 48, 64))
    hull = visual_hull(grid, silhouettes, depths, np.stack([K, K]), np.stack(cameras), 0.02)
    held = {tuple(p) for p in np.round(hull, 4)}
    assert all(tuple(p) in held for p in np.round(box, 4))
    assert np.abs(hull - [0, 0, 1]).max() < 0.05 + 0.03
    depths[0, :, :32] = 1.2  # camera 0 sees the table 20 cm behind the box's left half
    carved = visual_hull(grid, silhouettes, depths, np.stack([K, K]), np.stack(cameras), 0.02)
    assert len(carved) < len(hull) and (carved[:, 0] > 0).all()


def test_first_frame_hull_covers_each_model_and_its_reach_only():
    """Two 2 cm models 0.8 m apart, every pixel a silhouette: the hull's cells (5 mm) reach label_radius_m
    (3 cm) around each model, and none lie between the two, where a grid over both would put five times more."""
    K = np.array([[200.0, 0, 32], [0, 200.0, 24], [0, 0, 1]])
    frames = SimpleNamespace(K=K[None], T_cw=look_at_T_cw([0.0, -1.0, 1.0], [0.0, 0.0, 0.0])[None])
    cfg = {**CFG, "hull_erode_px": 0, "hull_voxel_m": 0.005, "label_radius_m": 0.03, "carve_margin_m": 0.02}
    rng = np.random.default_rng(3)
    models = [_box([-0.4, 0, 0.05], rng, 200, (0.02,) * 3), _box([0.4, 0, 0.05], rng, 200, (0.02,) * 3)]
    objects = RigidObjects(cfg)
    objects.add(np.concatenate(models), np.zeros(400, int), np.repeat([1, 2], 200))
    hull = first_frame_hull(np.ones((1, 48, 64), bool), np.zeros((1, 48, 64)), frames, objects, cfg)
    nearest = np.minimum(*[cKDTree(m).query(hull)[0] for m in models])
    assert nearest.max() < 0.03 * np.sqrt(3) + 0.005  # within a model's box and a cell
    reach = np.stack(np.meshgrid(*[np.arange(-0.045, 0.05, 0.005)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for m in models:  # every cell centre near a model point is in the hull
        near = reach + m.mean(axis=0).round(3)
        near = near[cKDTree(m).query(near)[0] < 0.025]
        assert cKDTree(hull).query(near)[0].max() < 0.005
    assert len(hull) <= 2 * 17 ** 3  # each model's box, 8 cm a side; a grid over both: 172 x 16 x 16 cells


def test_the_hull_fills_in_a_part_of_the_object_behind_that_no_model_point_holds():
    """Pin A (columns 20-29, 1 m) in front of pin B (columns 25-44, 1.2 m), both of one colour. B's model
    lacks its columns 30-34 (only this view sees them and its depth there is A's); B's share of the hull
    holds them, so there B shows in front, while A's model keeps its own columns."""
    a, b_seen, b_missing = _pin_plane(20, 29, 1.0), _pin_plane(35, 44, 1.2), _pin_plane(30, 34, 1.2)
    objects = RigidObjects(CFG)
    objects.add(np.concatenate([a, b_seen]), np.zeros(len(a) + len(b_seen), int),
                np.repeat([1, 2], [len(a), len(b_seen)]))
    # The hull is stored in each model's frame: B has moved by a turn and a shift since its model was made.
    turn = Rotation.from_rotvec([0.1, 0.2, 0.3]).as_matrix()
    objects.models[2] = (objects.models[2] - [0.01, 0, 0.02]) @ turn  # posed: model @ turn.T + shift
    objects.poses[2] = (turn, np.array([0.01, 0, 0.02]))
    objects.add_hull(np.concatenate([a, b_seen, b_missing]), 0.1)  # pixels here are 12 mm wide at 1.2 m
    assert len(objects.hulls[1]) == len(a) and len(objects.hulls[2]) == len(b_seen) + len(b_missing)
    assert np.allclose(objects.posed(shapes=objects.hulls)[0], np.concatenate([a, b_seen, b_missing]))
    model, model_ids = objects.posed()
    assert np.allclose(model, np.concatenate([a, b_seen]))
    front = front_model_ids(model, model_ids, PIN_K, np.eye(4), (48, 64))
    assert (front[10:40, 30:35] == 0).all()
    objects.make_surfels()
    hull, hull_ids = objects.posed(shapes=objects.hulls)
    front = front_ids(objects.posed_surfels(), hull, hull_ids, PIN_K, np.eye(4), (48, 64))
    assert (front[10:40, 20:30] == 1).all() and (front[10:40, 30:45] == 2).all() and (front[:10] == 0).all()
    # No point in the image (none at all, or all behind the camera): nothing shows.
    for points in (np.zeros((0, 3)), -a):
        assert not front_model_ids(points, np.ones(len(points), int), PIN_K, np.eye(4), (48, 64)).any()


def test_ids_follow_fast_objects_that_pass_close_to_each_other():
    """Two boxes moving 3 cm per frame towards each other and spinning keep their ids, also once they
    touch: the rigid models do not absorb the other box's points."""
    rng = np.random.default_rng(2)
    shape = _box([0, 0, 0], rng)
    objects = RigidObjects(CFG)
    grey = np.zeros(800, int)  # one colour: the ids must follow from geometry alone
    for t in range(7):
        spin = Rotation.from_rotvec([0, 0, 0.3 * t]).as_matrix()
        a = shape @ spin.T + [-0.2 + 0.03 * t, 0, 0.05]
        b = shape @ spin.T + [0.2 - 0.03 * t, 0.005, 0.05]
        pts = np.concatenate([a, b]) + rng.normal(0, 0.001, (800, 3))
        if t == 0:
            objects.add(pts, grey, connected_objects(pts, CFG["voxel_m"], CFG["min_points"]))
            labels = objects.label(pts, grey, _two_cameras(pts))
            first = labels[0], labels[400]
            assert first[0] != first[1]
        else:
            labels = objects.track(pts, grey, _two_cameras(pts))
        assert (labels[:400] == first[0]).mean() > 0.99 and (labels[400:] == first[1]).mean() > 0.99, t
    assert objects.next_id == 3  # no spurious new objects
    R, t = objects.poses[first[0]]
    assert np.allclose(R, Rotation.from_rotvec([0, 0, 1.8]).as_matrix(), atol=0.02)


def test_a_cloud_that_one_camera_alone_sees_is_no_new_object():
    """A box appears 30 cm from the tracked one: seen by one camera (a matcher's mistake) it stays
    unlabelled, seen by two it is a new object; a few points of a second camera do not confirm it, and two
    cameras do not make a speck of fewer than ``min_points`` an object."""
    rng = np.random.default_rng(8)
    tracked = _box([0, 0, 0.04], rng)
    box, speck = _box([0.3, 0, 0.04], rng), _box([0.3, 0, 0.04], rng, 10, (0.005,) * 3)
    for new, cameras_of_new, expected in ((box, np.zeros(400, int), 0),
                                          (box, np.r_[np.zeros(395, int), np.ones(5, int)], 0),
                                          (box, _two_cameras(box), 2), (speck, _two_cameras(speck), 0)):
        objects = RigidObjects(CFG)
        objects.add(tracked, np.zeros(400, int), np.ones(400, int))
        pts = np.concatenate([tracked, new])
        labels = objects.label(pts, np.zeros(len(pts), int), np.r_[_two_cameras(tracked), cameras_of_new])
        assert (labels[:400] == 1).all() and (labels[400:] == expected).mean() > 0.98, cameras_of_new[-10:]
        assert objects.next_id == max(expected, 1) + 1


def _topple(relocalise_radius_m):
    """A 4 x 4 x 8 cm box stands still for two frames, then lies 9 cm away on its side (struck: no
    constant-velocity prediction reaches it). Returns the tracker and the last frame's points and ids."""
    rng = np.random.default_rng(3)
    shape = _box([0, 0, 0], rng, 1500)
    standing = shape + [0, 0, 0.04]
    lying = shape @ Rotation.from_rotvec([np.pi / 2, 0, 0]).as_matrix().T + [0.09, 0.02, 0.02]
    objects = RigidObjects({**CFG, "relocalise_radius_m": relocalise_radius_m})
    grey = np.zeros(len(shape), int)
    objects.add(standing, grey, connected_objects(standing, CFG["voxel_m"], CFG["min_points"]))
    cameras = _two_cameras(shape)
    objects.label(standing, grey, cameras)
    objects.track(standing + rng.normal(0, 0.001, standing.shape), grey, cameras)
    return objects, lying, objects.track(lying + rng.normal(0, 0.001, lying.shape), grey, cameras)


def test_a_toppled_object_is_relocalised_and_keeps_its_id():
    objects, lying, labels = _topple(0.1)
    assert (labels == 1).mean() > 0.99 and objects.next_id == 2
    R, _ = objects.poses[1]
    model, _ = objects.posed()
    assert np.linalg.norm(model.mean(axis=0) - lying.mean(axis=0)) < 0.003
    assert abs(R[:, 2] @ [0, 1, 0]) > np.cos(np.radians(5))  # the long axis lies along y, as the box does
    # Without the search the box's points are re-attached to it, but its model is left standing.
    objects, _, labels = _topple(0.001)
    model, _ = objects.posed()
    assert np.linalg.norm(model.mean(axis=0) - lying.mean(axis=0)) > 0.05


def test_object_colour_probability_learns_object_against_table_colours():
    """Decided pixels teach the histogram; undecided ones of the same colours are classified by it, and a
    colour never seen stays at 0.5."""
    rng = np.random.default_rng(4)
    C, H, W = 2, 40, 60
    colour = np.zeros((C, H, W, 3), np.uint8)
    colour[...] = rng.integers(120, 200, (C, H, W, 1)) * [1.0, 0.75, 0.5]  # brown table noise
    obj = np.zeros((C, H, W), bool)
    obj[:, 10:30, 20:40] = True
    colour[obj] = rng.integers(0, 40, (obj.sum(), 3)) + [200, 20, 20]  # red object
    colour[1, 0, 0] = [0, 255, 0]  # a green pixel in the undecided view: a colour no decided pixel has
    decided = np.zeros((C, H, W), bool)
    decided[0] = True  # view 0 decided everywhere, view 1 nowhere
    p = object_colour_probability(colour, decided, decided & ~obj, np.ones((C, H, W), bool))
    assert (p[1][obj[1]] > 0.9).mean() > 0.95
    assert (p[1][~obj[1]] < 0.1).mean() > 0.95
    assert p[1, 0, 0] == 0.5


def test_table_parallax_separates_objects_from_the_table_and_its_shadows():
    """Two cameras over a textured table; a white box stands on it and a dark patch (a shadow) lies on
    it. Pixels of the box disagree with the table point behind them wherever the other camera sees that
    point (elsewhere they stay undecided); the patch and the rest of the table agree."""
    W, H = 160, 120
    K = np.stack([intrinsics_from_hfov(W, H, np.radians(60))] * 2)
    T_cw = np.stack([look_at_T_cw([0.4, 0.0, 0.4], [0, 0, 0]), look_at_T_cw([-0.4, 0.05, 0.4], [0, 0, 0])])
    cfg = {"workspace_xy_m": [[-0.3, -0.3], [0.3, 0.3]], "table_colour_tolerance": 30, "table_visibility_m": 0.01}

    def table_colour(x, y):
        c = 100 + 60 * np.sin(40 * x) * np.cos(35 * y)
        shadow = (np.abs(x + 0.13) < 0.03) & (np.abs(y - 0.05) < 0.03)
        return np.where(shadow, c * 0.4, c)

    colour, depth, box = np.zeros((2, H, W, 3), np.uint8), np.zeros((2, H, W), np.float32), np.zeros((2, H, W), bool)
    shadow = np.zeros((2, H, W), bool)
    for c in range(2):
        T_wc = np.linalg.inv(T_cw[c])
        u, v = np.meshgrid(np.arange(W), np.arange(H))
        rays = np.stack([(u - K[c, 0, 2]) / K[c, 0, 0], (v - K[c, 1, 2]) / K[c, 1, 1], np.ones((H, W))], -1)
        d = rays @ T_wc[:3, :3].T
        s = -T_wc[2, 3] / d[..., 2]
        X = T_wc[:3, 3] + s[..., None] * d
        colour[c] = table_colour(X[..., 0], X[..., 1])[..., None].astype(np.uint8)
        in_shadow = (np.abs(X[..., 0] + 0.13) < 0.02) & (np.abs(X[..., 1] - 0.05) < 0.02)
        depth[c] = s  # z-depth: rays have z = 1 in the camera
        # The box: 4 cm cube centred at the origin, drawn as its projected silhouette in front.
        corners = np.array([[x, y, z] for x in (-0.02, 0.02) for y in (-0.02, 0.02) for z in (0, 0.04)])
        uv, z = project(K[c], T_cw[c], corners)
        hull = cv2.convexHull(uv.astype(np.float32))
        inside = np.zeros((H, W), np.uint8)
        cv2.fillConvexPoly(inside, np.rint(hull).astype(np.int32), 1)
        box[c] = inside > 0
        colour[c][box[c]] = 240
        depth[c][box[c]] = z.min()
        shadow[c] = in_shadow & ~cv2.dilate(inside, np.ones((5, 5), np.uint8)).astype(bool)  # blur reaches 2 px
    decided, table = TableParallax(K, T_cw, (H, W), cfg).classify(colour, depth)
    obj = decided & ~table
    for c in range(2):
        assert (obj[c] & box[c]).sum() > 0.3 * box[c].sum()
        assert not (table[c] & box[c]).any()
        assert shadow[c].sum() >= 10 and not (obj[c] & shadow[c]).any() and table[c][shadow[c]].mean() > 0.7
        assert (obj[c] & ~box[c]).sum() <= 0.01 * (~box[c]).sum()


def _calibration_from(gt_path, out, names):
    """A calibration artifact holding the true cameras: the masks stage tested on its own."""
    gt = open_artifact(gt_path, "groundtruth")
    with ArtifactWriter(out, "calibration", "calibration", {}, scene="bowling", episode="calibration",
                        split="calibration", camera_names=names, intrinsics_source="recording") as g:
        put(g, "T_cw_color", gt["T_cw_color"][:])


@pytest.mark.slow
def test_masks_stage_on_a_small_episode(bowling_episode, default_config, small_config, tmp_path):
    cap = open_artifact(bowling_episode[0], "capture")
    names = list(cap.attrs["camera_names"])
    depth, cal, masks = tmp_path / "depth.zarr", tmp_path / "cal.zarr", tmp_path / "masks.zarr"
    spec = json.dumps({"name": "bowling", "depth": {**default_config["depth"], "method": "sensor"},
                       "masks": small_config["masks"]})
    assert run_module("pipeline.depth", "--capture", str(bowling_episode[0]), "--spec", spec,
                      "--out", str(depth)).returncode == 0
    _calibration_from(bowling_episode[1], cal, names)
    result = run_module("pipeline.masks", "--capture", str(bowling_episode[0]), "--depth", str(depth),
                        "--calibration", str(cal), "--spec", spec, "--out", str(masks))
    assert result.returncode == 0, result.stderr
    art = open_artifact(masks, "masks")
    assert art["ids"].shape == cap["color"].shape[:4]
    figures = mask_figures(art, open_artifact(bowling_episode[1], "groundtruth"))
    # 160x120 and 4 frames: pins are a few pixels wide; the figures here guard against breakage.
    assert figures["id_consistency"][0] > 0.8 and figures["miou"][0] > 0.4


@pytest.mark.slow
def test_masks_bad_input(bowling_episode, default_config, tmp_path):
    depth, cal = tmp_path / "depth.zarr", tmp_path / "cal.zarr"
    spec = json.dumps({"name": "bowling", "depth": {**default_config["depth"], "method": "sensor"}})
    assert run_module("pipeline.depth", "--capture", str(bowling_episode[0]), "--spec", spec,
                      "--out", str(depth)).returncode == 0
    _calibration_from(bowling_episode[1], cal, ["a", "b", "c", "d"])
    with pytest.raises(MasksError, match="has cameras"):
        write_masks(str(bowling_episode[0]), str(depth), str(cal), default_config["masks"], str(tmp_path / "m.zarr"))
    _calibration_from(bowling_episode[1], cal, ["cam0", "cam1", "cam2", "cam3"])
    high = {**default_config["masks"], "table_clearance_m": 0.3}
    with pytest.raises(MasksError, match=re.escape(f"{depth}: nothing stands above the table")):
        write_masks(str(bowling_episode[0]), str(depth), str(cal), high, str(tmp_path / "m.zarr"))
    assert not (tmp_path / "m.zarr").exists()
