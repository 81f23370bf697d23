"""Scenes as data: sample an episode's initial state from the config and simulate it with pybullet.

An object group in the config (``objects[i]``) has ``count`` instances; instance ids run from 1 over all
groups in config order. Poses are object-to-world (4,4) transforms of each object's centre-of-mass frame.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import pybullet
from scipy.spatial.transform import Rotation

from .config import ConfigError
from .shapes import Frustum, Shape
from .geometry import make_T


@dataclass
class SceneObject:
    object_id: int
    name: str  # group name and index, e.g. "pin_3"
    group: str
    shape: Shape
    spec: dict  # the group's config entry
    appearances: list[dict]  # one per shape part


@dataclass
class InitialState:
    T_wo: np.ndarray  # (N,4,4)
    velocity: np.ndarray  # (N,3) m/s
    angular_velocity: np.ndarray  # (N,3) rad/s


def sample(spec, rng: np.random.Generator, shape=None) -> np.ndarray | float:
    """Draw a value from a sampled quantity of the config (fixed, {uniform: [lo, hi]}, {normal: [mu, sd]})."""
    if isinstance(spec, dict):
        if "uniform" in spec:
            lo, hi = (np.asarray(v, dtype=float) for v in spec["uniform"])
            return rng.uniform(lo, hi) if lo.shape else float(rng.uniform(lo, hi))
        mu, sd = (np.asarray(v, dtype=float) for v in spec["normal"])
        return rng.normal(mu, sd) if mu.shape else float(rng.normal(mu, sd))
    return np.asarray(spec, dtype=float) if isinstance(spec, list) else float(spec)


def build_objects(scene_cfg: dict) -> list[SceneObject]:
    objects = []
    for group in scene_cfg["objects"]:
        shape_spec = group["shape"]
        apps = group["appearance"] if isinstance(group["appearance"], list) else [group["appearance"]]
        for i in range(group.get("count", 1)):
            shape = Shape.from_spec(shape_spec)  # one per instance: parts are mutated when centred
            app = apps[i % len(apps)]
            part_apps = [p.spec.get("appearance", app) for p in shape.parts]
            name = group["name"] if group.get("count", 1) == 1 else f"{group['name']}_{i}"
            objects.append(SceneObject(len(objects) + 1, name, group["name"], shape, group, part_apps))
    return objects


def _layout_offsets(layout: dict | None, count: int, shape: Shape, yaws: np.ndarray):
    """Per-instance (x, y, level) offsets of a group layout, relative to the group origin."""
    if layout is None:
        if count != 1:
            raise ConfigError(f"an object group with count {count} needs a placement layout")
        return np.zeros((1, 2)), np.zeros(1, int)
    axis = np.radians(layout.get("axis_deg", 0.0))
    along = np.array([np.cos(axis), np.sin(axis)])
    across = np.array([-along[1], along[0]])
    if layout["type"] == "triangle":
        pts = []
        for r in range(layout["rows"]):
            for i in range(r + 1):
                pts.append(along * r * layout["spacing"] * np.sqrt(3) / 2 + across * (i - r / 2) * layout["spacing"])
        if len(pts) != count:
            raise ConfigError(f"triangle layout of {layout['rows']} rows holds {len(pts)} objects, count is {count}")
        return np.array(pts), np.zeros(count, int)
    if layout["type"] == "row":
        return np.array([(i - (count - 1) / 2) * layout["spacing"] * along for i in range(count)]), np.zeros(count, int)
    stacks = layout["stacks"]
    if count % stacks:
        raise ConfigError(f"stack layout: count {count} is not a multiple of stacks {stacks}")
    per = count // stacks
    base = [(s - (stacks - 1) / 2) * layout["spacing"] * along for s in range(stacks)]
    return np.array([base[i // per] for i in range(count)]), np.array([i % per for i in range(count)])


def sample_initial_state(objects: list[SceneObject], scene_cfg: dict, rng: np.random.Generator) -> InitialState:
    n = len(objects)
    T = np.tile(np.eye(4), (n, 1, 1))
    vel = np.zeros((n, 3))
    ang = np.zeros((n, 3))
    start = 0
    for group in scene_cfg["objects"]:
        count = group.get("count", 1)
        members = objects[start:start + count]
        start += count
        pl = group["placement"]
        origin = np.asarray(sample(pl.get("position", [0, 0, 0]), rng), dtype=float)
        yaws = np.array([np.radians(sample(pl.get("yaw_deg", 0.0), rng)) for _ in members])
        offsets, levels = _layout_offsets(pl.get("layout"), count, members[0].shape, yaws)
        jitter = np.asarray(pl.get("jitter", [0.0, 0.0]), dtype=float)
        stack_top: dict[tuple, float] = {}
        for k, (obj, off, lev) in enumerate(zip(members, offsets, levels)):
            R = Rotation.from_euler("z", yaws[k]).as_matrix()
            lo, hi = obj.shape.z_extent(R)
            xy = origin[:2] + off + rng.uniform(-jitter, jitter)
            key = tuple(np.round(off, 6))
            floor = stack_top.get(key, 0.0) if lev > 0 else 0.0
            z = floor - lo + 2e-4  # rest on the table (or the level below) without touching it
            stack_top[key] = z + hi
            T[obj.object_id - 1] = make_T(R, np.array([xy[0], xy[1], z]))
            if "velocity" in pl:
                vel[obj.object_id - 1] = sample(pl["velocity"], rng)
            if "angular_velocity" in pl:
                ang[obj.object_id - 1] = sample(pl["angular_velocity"], rng)
            if pl.get("roll", False):
                # Rolling without slipping on the table: omega = z x v / (height of the centre).
                ang[obj.object_id - 1] = np.cross([0, 0, 1], vel[obj.object_id - 1]) / max(z, 1e-6)
    return InitialState(T, vel, ang)


def _collision_shape(client: int, shape: Shape, tmpdir: str) -> int:
    kw = {"shapeTypes": [], "radii": [], "halfExtents": [], "lengths": [], "fileNames": [], "meshScales": [],
          "collisionFramePositions": [], "collisionFrameOrientations": []}
    for i, part in enumerate(shape.parts):
        prim = part.primitive
        radius, half, length, fname = 0.0, [0, 0, 0], 0.0, ""
        if prim.kind == "sphere":
            kind, radius = pybullet.GEOM_SPHERE, prim.radius
        elif prim.kind == "box":
            kind, half = pybullet.GEOM_BOX, list(prim.half)
        elif prim.radius_bottom == prim.radius_top:
            kind, radius, length = pybullet.GEOM_CYLINDER, prim.radius_bottom, prim.height
        else:  # a frustum: its convex hull from a fine polygon at each end
            kind = pybullet.GEOM_MESH
            fname = os.path.join(tmpdir, f"frustum_{id(part)}_{i}.obj")
            _write_frustum_obj(prim, fname)
        kw["shapeTypes"].append(kind)
        kw["radii"].append(radius)
        kw["halfExtents"].append(half)
        kw["lengths"].append(length)
        kw["fileNames"].append(fname)
        kw["meshScales"].append([1, 1, 1])
        kw["collisionFramePositions"].append(part.T[:3, 3].tolist())
        kw["collisionFrameOrientations"].append(Rotation.from_matrix(part.T[:3, :3]).as_quat().tolist())
    return pybullet.createCollisionShapeArray(physicsClientId=client, **kw)


def _write_frustum_obj(prim: Frustum, path: str, segments: int = 48):
    # Circumscribed polygons, so the hull contains the exact frustum rendered (within 0.2% of radius).
    k = 1 / np.cos(np.pi / segments)
    lines = []
    for z, r in ((-prim.height / 2, prim.radius_bottom), (prim.height / 2, prim.radius_top)):
        for a in np.linspace(0, 2 * np.pi, segments, endpoint=False):
            lines.append(f"v {r * k * np.cos(a):.7f} {r * k * np.sin(a):.7f} {z:.7f}")
    faces = [f"f {' '.join(str(i + 1) for i in range(segments))}",
             f"f {' '.join(str(segments + i + 1) for i in reversed(range(segments)))}"]
    for i in range(segments):
        j = (i + 1) % segments
        faces.append(f"f {i + 1} {j + 1} {segments + j + 1} {segments + i + 1}")
    with open(path, "w") as f:
        f.write("\n".join(lines + faces) + "\n")


def simulate(objects: list[SceneObject], init: InitialState, scene_cfg: dict, table_cfg: dict) -> np.ndarray:
    """Run the episode; returns object-to-world poses (T, N, 4, 4) at every frame (frame 0 = initial)."""
    client = pybullet.connect(pybullet.DIRECT)
    try:
        substeps = scene_cfg.get("substeps", 8)
        dt = 1.0 / (scene_cfg["fps"] * substeps)
        pybullet.setGravity(0, 0, -9.81, physicsClientId=client)
        pybullet.setPhysicsEngineParameter(fixedTimeStep=dt, numSolverIterations=50, deterministicOverlappingPairs=1,
                                           physicsClientId=client)
        plane = pybullet.createMultiBody(0, pybullet.createCollisionShape(pybullet.GEOM_PLANE, physicsClientId=client),
                                         physicsClientId=client)
        pybullet.changeDynamics(plane, -1, lateralFriction=table_cfg["friction"], restitution=table_cfg["restitution"],
                                physicsClientId=client)
        bodies = []
        with tempfile.TemporaryDirectory() as tmp:
            for obj in objects:
                col = _collision_shape(client, obj.shape, tmp)
                T = init.T_wo[obj.object_id - 1]
                body = pybullet.createMultiBody(baseMass=obj.spec["mass"], baseCollisionShapeIndex=col,
                                                basePosition=T[:3, 3].tolist(),
                                                baseOrientation=Rotation.from_matrix(T[:3, :3]).as_quat().tolist(),
                                                physicsClientId=client)
                pybullet.changeDynamics(body, -1, lateralFriction=obj.spec["friction"],
                                        restitution=obj.spec["restitution"],
                                        rollingFriction=obj.spec.get("rolling_friction", 0.0),
                                        localInertiaDiagonal=obj.shape.inertia_diagonal(obj.spec["mass"]).tolist(),
                                        linearDamping=0.0, angularDamping=0.0, physicsClientId=client)
                pybullet.resetBaseVelocity(body, init.velocity[obj.object_id - 1].tolist(),
                                           init.angular_velocity[obj.object_id - 1].tolist(), physicsClientId=client)
                bodies.append(body)
        pybullet.performCollisionDetection(physicsClientId=client)
        for c in pybullet.getContactPoints(physicsClientId=client):
            if c[8] < -2e-3 and c[1] != plane and c[2] != plane:
                a, b = objects[bodies.index(c[1])].name, objects[bodies.index(c[2])].name
                raise ConfigError(f"objects {a} and {b} overlap by {-c[8] * 1000:.1f} mm at the start; "
                                  "widen the layout spacing or shrink the jitter")
        poses = np.zeros((scene_cfg["frames"], len(objects), 4, 4))
        for f in range(scene_cfg["frames"]):
            for k, body in enumerate(bodies):
                pos, quat = pybullet.getBasePositionAndOrientation(body, physicsClientId=client)
                poses[f, k] = make_T(Rotation.from_quat(quat).as_matrix(), np.asarray(pos))
            for _ in range(substeps):
                pybullet.stepSimulation(physicsClientId=client)
        return poses
    finally:
        pybullet.disconnect(client)
