"""Stage `capture`: a synthetic four-RealSense recording of one episode (or the calibration sequence).

    python -m pipeline.capture --config config.yaml --scene bowling --episode train_0000 \
        --capture results/bowling/capture/train_0000.zarr \
        --groundtruth results/bowling/groundtruth/train_0000.zarr

``--episode calibration`` renders the ChArUco board sequence the cameras are calibrated from. The
capture artifact holds only what real units report; the ground-truth artifact (true camera poses, object
poses and shapes, exact depth and instance ids) is read by evaluation alone.
"""
from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from .artifact import ArtifactWriter, frame_array, put
from .charuco import T_world_board_on_table, board_thickness, make_board
from .config import ConfigError, EPISODE_SPLITS, config_hash, episode_names, read_scene_spec, split_of
from .geometry import invert_T, make_T
from .realsense import build_rig, render_unit
from .render import RenderObject, Table
from .shapes import Box, Part, Shape
from .sim import build_objects, sample_initial_state, simulate

CALIBRATION = "calibration"


def unit_config(spec: dict) -> dict:
    """The part of a scene spec that a real recording would report too, for the capture artifact: the
    cameras' names and their streams' settings. Where the cameras stand, the scene, the table and the
    seeds (which would regenerate the ground truth) go into the ground-truth artifact only."""
    rig = spec["rig"]
    return {"name": spec["name"], "rig": {"cameras": [{"name": c["name"]} for c in rig["cameras"]],
                                          **{k: rig[k] for k in ("color", "depth", "projector")}}}
SURFACE_POINTS = 2000


def episode_rng(seed: int, episode: str, purpose: int) -> np.random.Generator:
    """Independent, reproducible streams per scene seed, episode and purpose (0 scene, 1 sensor noise)."""
    if episode == CALIBRATION:
        key = [seed, 99, 0, purpose]
    else:
        key = [seed, EPISODE_SPLITS.index(split_of(episode)), int(episode.split("_")[1]), purpose]
    return np.random.default_rng(key)


# -- calibration board -----------------------------------------------------------------------------

def board_object(board_cfg: dict, footprint_m: float, object_id: int = 1):
    """The ChArUco board as a render object; returns it and T_obj_board (OpenCV board frame in object frame).

    ``footprint_m``: the width on the board of one camera pixel (at the nearest camera). The texture is
    low-pass filtered to half of it, as a lens and sensor would, so that the printed corners are not
    aliased by sampling it at pixel centres."""
    cols, rows = board_cfg["squares"]
    sq, margin, th = board_cfg["square_m"], board_cfg["square_m"] / 4, board_thickness(board_cfg)
    ppm = 1200.0  # texture pixels per metre
    board = make_board(board_cfg)
    width, height = cols * sq + 2 * margin, rows * sq + 2 * margin
    img = board.generateImage((round(width * ppm), round(height * ppm)), marginSize=round(margin * ppm))
    img = cv2.GaussianBlur(img.astype(np.float32) / 255.0, (0, 0), max(0.5 * footprint_m * ppm, 0.6))
    img = 0.05 + 0.85 * img  # matte black ink and paper
    size = (width, height, th)
    shape = Shape([Part(Box(size), np.eye(4), {"type": "box", "size": list(size)})], centred=True)
    app = {"image": img, "extent": (width, height), "top_z": th / 2}
    # The object frame sits at the board's centre, th/2 below the printed face: frame 0 lies on the table.
    T_obj_board = make_T(np.eye(3), np.array([0.0, 0.0, -th / 2])) @ T_world_board_on_table(board_cfg)
    return RenderObject(shape, np.eye(4), object_id, [app]), T_obj_board


def calibration_poses(board_cfg: dict, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T,4,4) board object-to-world poses: frame 0 flat on the table, centred at the world origin;
    later frames held tilted above the table, as a person waving the board would."""
    poses = np.tile(np.eye(4), (frames, 1, 1))
    poses[0, 2, 3] = board_thickness(board_cfg) / 2
    for f in range(1, frames):
        tilt = Rotation.from_rotvec(np.radians(rng.uniform(8, 25)) * np.array([*_unit2(rng), 0.0]))
        yaw = Rotation.from_euler("z", rng.uniform(-30, 30), degrees=True)
        poses[f, :3, :3] = (tilt * yaw).as_matrix()
        poses[f, :3, 3] = [rng.uniform(-0.08, 0.08), rng.uniform(-0.06, 0.06), rng.uniform(0.06, 0.16)]
    return poses


def _unit2(rng):
    a = rng.uniform(0, 2 * np.pi)
    return np.cos(a), np.sin(a)


# -- artifacts -------------------------------------------------------------------------------------

def _create_image_arrays(group, names, C, T, rig_cfg):
    """Per-camera, per-frame image arrays (C, T, H, W[, 3]), one chunk per image."""
    wc, hc = rig_cfg["color"]["resolution"]
    wd, hd = rig_cfg["depth"]["resolution"]
    arrays = {}
    for name, shape, dtype in names:
        full = (C, T, *({"c": (hc, wc), "d": (hd, wd)}[shape[0]]), *shape[1:])
        arrays[name] = frame_array(group, name, full, dtype)
    return arrays


def write_episode(spec: dict, episode: str, capture_path: str, gt_path: str) -> None:
    is_calib = episode == CALIBRATION
    missing = {"name", "rig", "table", CALIBRATION if is_calib else "scene"} - set(spec)
    if missing:
        raise ConfigError(f"the spec of scene {spec.get('name')!r} lacks {sorted(missing)}, needed for episode {episode!r}")
    rig_cfg, scene_cfg = spec["rig"], spec.get("scene")
    seed = spec["calibration"]["seed"] if is_calib else scene_cfg["seed"]
    if not is_calib and episode not in episode_names(scene_cfg):
        raise ConfigError(f"episode '{episode}' is not one of scene '{spec['name']}': {episode_names(scene_cfg)}")
    rng_scene, rng_noise = episode_rng(seed, episode, 0), episode_rng(seed, episode, 1)
    rig = build_rig(rig_cfg, seed=seed)
    table = Table(tuple(spec["table"]["size"]), spec["table"]["appearance"])

    if is_calib:
        frames, fps = spec["calibration"]["frames"], 1.0
        footprint = min(np.linalg.norm(invert_T(u.color.T_cw)[:3, 3]) / u.color.K[0, 0] for u in rig)
        board, T_obj_board = board_object(spec["calibration"]["board"], footprint)
        poses = calibration_poses(spec["calibration"]["board"], frames, rng_scene)[:, None]
        objects = [board]
        names, groups = ["board"], ["board"]
    else:
        frames, fps = scene_cfg["frames"], float(scene_cfg["fps"])
        scene_objects = build_objects(scene_cfg)
        init = sample_initial_state(scene_objects, scene_cfg, rng_scene)
        poses = simulate(scene_objects, init, scene_cfg, spec["table"])
        objects = [RenderObject(o.shape, np.eye(4), o.object_id, o.appearances) for o in scene_objects]
        names, groups = [o.name for o in scene_objects], [o.group for o in scene_objects]

    C = len(rig)
    times = np.arange(frames) / fps
    jitter = rng_noise.uniform(-1, 1, C) * rig_cfg["sync_jitter_s"]
    common = {"scene": spec["name"], "episode": episode, "split": CALIBRATION if is_calib else split_of(episode)}
    cap_attrs = {**common, "sequence": CALIBRATION if is_calib else "episode", "source": "synthetic",
                 "device": "simulated Intel RealSense D455", "fps": fps, "camera_names": [u.name for u in rig],
                 "streams": ["color", "depth", "ir_left", "ir_right"]}
    config = {k: spec[k] for k in ("name", "rig", "table", CALIBRATION if is_calib else "scene")}
    with ArtifactWriter(capture_path, "capture", "capture", unit_config(spec), **cap_attrs,
                        generator_config_hash=config_hash(config)) as cap, \
            ArtifactWriter(gt_path, "groundtruth", "capture", config, **common,
                           sequence=cap_attrs["sequence"], object_names=names, object_groups=groups) as gt:
        img = _create_image_arrays(cap, [("color", ("c", 3), "uint8"), ("depth", ("d",), "uint16"),
                                         ("ir_left", ("d",), "uint8"), ("ir_right", ("d",), "uint8")],
                                   C, frames, rig_cfg)
        img["depth"].attrs["depth_scale_m"] = rig_cfg["depth"]["depth_scale_m"]
        put(cap, "timestamps", times[None, :] + jitter[:, None], {"unit": "s"})
        put(cap, "depth_scale_m", np.full(C, rig_cfg["depth"]["depth_scale_m"]))
        put(cap, "K_color", np.stack([u.color.K for u in rig]))
        put(cap, "K_depth", np.stack([u.depth.K for u in rig]), {"note": "infrared left and right share it"})
        put(cap, "dist_color", np.zeros((C, 5)), {"model": "OpenCV (k1, k2, p1, p2, k3)"})
        put(cap, "dist_depth", np.zeros((C, 5)), {"model": "OpenCV (k1, k2, p1, p2, k3)"})
        put(cap, "T_color_depth", np.stack([u.T_color_depth for u in rig]), {"maps": "depth frame -> colour frame"})
        put(cap, "T_irright_depth", np.stack([u.T_irright_depth for u in rig]),
            {"maps": "depth (infrared-left) frame -> infrared-right frame"})

        gimg = _create_image_arrays(gt, [("depth_color", ("c",), "float32"), ("ids_color", ("c",), "uint16"),
                                         ("depth_ir", ("d",), "float32"), ("ids_ir", ("d",), "uint16")],
                                    C, frames, rig_cfg)
        put(gt, "T_cw_depth", np.stack([u.depth.T_cw for u in rig]), {"maps": "world -> depth (infrared-left) frame"})
        put(gt, "T_cw_color", np.stack([u.color.T_cw for u in rig]), {"maps": "world -> colour frame"})
        put(gt, "T_cw_irright", np.stack([u.ir_right.T_cw for u in rig]), {"maps": "world -> infrared-right frame"})
        put(gt, "T_cw_projector", np.stack([u.projector.T_pw for u in rig]))
        put(gt, "K_color", np.stack([u.color.K for u in rig]))
        put(gt, "K_depth", np.stack([u.depth.K for u in rig]))
        put(gt, "times", times, {"unit": "s"})
        put(gt, "object_ids", np.array([o.object_id for o in objects], dtype=np.int32))
        put(gt, "poses", poses,
            {"shape": "(T, N, 4, 4)", "maps": "object (centre-of-mass) frame -> world"})
        surf = [o.shape.sample_surface(SURFACE_POINTS, np.random.default_rng([seed, k])) for k, o in enumerate(objects)]
        put(gt, "surface_points", np.stack([s[0] for s in surf]), {"frame": "object"})
        put(gt, "surface_normals", np.stack([s[1] for s in surf]), {"frame": "object"})
        gt.attrs["shapes"] = [[{**p.spec, "T_object_part": p.T.tolist()} for p in o.shape.parts] for o in objects]
        if is_calib:
            put(gt, "T_world_board", poses[:, 0] @ T_obj_board,
                {"frame": "OpenCV ChArUco board frame (origin at the pattern's outer corner, z into the board)"})
            gt.attrs["board"] = spec["calibration"]["board"]
            gt.attrs["world_anchor"] = ("frame 0: board flat on the table, pattern centred at the world origin, "
                                        "board x along world x, board y along world -y")
        else:
            gt.attrs["masses"] = [o.spec["mass"] for o in scene_objects]

        for f in tqdm(range(frames), desc=f"{spec['name']}/{episode}", unit="frame", file=sys.stderr):
            for ob, T in zip(objects, poses[f]):
                ob.T_wo = T
            for c, unit in enumerate(rig):
                out = render_unit(unit, objects, table, rng_noise)
                for key, arr in img.items():
                    arr[c, f] = out[key]
                for key, arr in gimg.items():
                    arr[c, f] = out[key]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.capture", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="config.yaml (with --scene)")
    ap.add_argument("--scene", help="scene name in the config")
    ap.add_argument("--spec", help="the scene's validated config section as JSON (what Snakemake passes)")
    ap.add_argument("--episode", required=True, help="e.g. train_0000, or 'calibration'")
    ap.add_argument("--capture", required=True, help="output capture artifact (.zarr)")
    ap.add_argument("--groundtruth", required=True, help="output ground-truth artifact (.zarr)")
    args = ap.parse_args(argv)
    try:
        spec = read_scene_spec(args.config, args.scene, args.spec)
        write_episode(spec, args.episode, args.capture, args.groundtruth)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
