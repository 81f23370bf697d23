"""Stage `ingest`: real captures into the capture schema (the synthetic capture's, without ground truth).

RealSense recordings, one per camera (ROS1 ``.bag`` or ROS2 ``.db3``), read with pyrealsense2 playback:

    python -m pipeline.ingest realsense --camera cam0=rec/cam0.bag --camera cam1=rec/cam1.bag ... \\
        --scene lab --episode train_0000 --out results/lab/capture/train_0000.zarr

Within a camera, the streams' frames are grouped by timestamp around the reference stream (depth, else
colour); across cameras, framesets are matched to the first camera's by timestamp within
``--sync-tolerance-ms`` (default half a frame period). Timestamps must share a clock (global time
domain or hardware sync). Frames left out are counted per camera and stream, printed and stored in the
``sync`` attribute; a camera that loses more than ``--max-unmatched`` of its frames is an error.

A folder of images, one file per camera and frame (``{camera}`` and ``{frame}`` in the patterns), or
one video per camera (``--color 'cam_{camera}.mp4'``, every ``--frame-step``-th frame):

    python -m pipeline.ingest images DIR --cameras 0 1 2 3 --color 'img_{camera}.png' \\
        --intrinsics intr_list.npy --out results/demo/capture/test_0000.zarr

Depth is a 16-bit PNG in millimetres (``--depth-scale`` to change), registered to the colour camera.
Intrinsics come from a ``.npy`` (C, 3, 3) in camera order or a ``.json`` ``{camera: {"K": 3x3,
"dist": [k1, k2, p1, p2, k3]}}``. A lab's own calibration (camera-to-world ``R`` and ``t``, metres) can
ride along as ``T_cw_color``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .artifact import ArtifactWriter, frame_array, put
from .geometry import invert_T, make_T

STREAMS = ("color", "depth", "ir_left", "ir_right")  # capture-schema order
DIST_MODEL = "OpenCV (k1, k2, p1, p2, k3)"


class IngestError(RuntimeError):
    """Input that cannot be ingested; the message names the file, camera or frame."""


# -- RealSense recordings --------------------------------------------------------------------------

@dataclass
class Recording:
    """One camera's recording, every frame of every stream in memory."""

    camera: str
    path: str
    device: str
    intrinsics: dict[str, dict]  # stream -> {"width", "height", "K" (3,3), "dist" (5,), "model", "fps"}
    frames: dict[str, list] = field(default_factory=dict)  # stream -> [(timestamp s, frame number, image)]
    depth_scale_m: float | None = None
    T_color_depth: np.ndarray | None = None  # (4,4) depth (infrared-left) frame -> colour frame
    T_irright_depth: np.ndarray | None = None  # (4,4) depth frame -> infrared-right frame
    timestamp_domain: str = ""


def _stream_name(profile) -> str | None:
    import pyrealsense2 as rs

    kind, index = profile.stream_type(), profile.stream_index()
    if kind == rs.stream.color:
        return "color"
    if kind == rs.stream.depth:
        return "depth"
    if kind == rs.stream.infrared:
        return "ir_right" if index == 2 else "ir_left"
    return None  # motion, pose, ...: not part of the capture schema


def _image(frame, stream: str, where: str) -> np.ndarray:
    """Copy a frame's pixels out: colour as RGB uint8 (H,W,3), depth uint16 (H,W), infrared uint8 (H,W)."""
    import pyrealsense2 as rs

    fmt = frame.get_profile().format()
    data = np.asanyarray(frame.get_data())
    if stream == "color":
        conversions = {rs.format.rgb8: None, rs.format.bgr8: cv2.COLOR_BGR2RGB, rs.format.rgba8: cv2.COLOR_RGBA2RGB,
                       rs.format.bgra8: cv2.COLOR_BGRA2RGB, rs.format.yuyv: cv2.COLOR_YUV2RGB_YUYV}
        if fmt not in conversions:
            raise IngestError(f"{where}: colour format {fmt} is not supported (rgb8, bgr8, rgba8, bgra8, yuyv)")
        return data.copy() if conversions[fmt] is None else cv2.cvtColor(data, conversions[fmt])
    expected = rs.format.z16 if stream == "depth" else rs.format.y8
    if fmt != expected:
        raise IngestError(f"{where}: {stream} format {fmt} is not supported (expected {expected})")
    return data.copy()


def _T_from_extrinsics(e) -> np.ndarray:
    # librealsense stores the rotation column-major; p_to = R p_from + t.
    return make_T(np.asarray(e.rotation, dtype=float).reshape(3, 3).T, np.asarray(e.translation, dtype=float))


def _extrinsics(profiles: dict, src: str, dst: str):
    if src not in profiles or dst not in profiles:
        return None
    try:
        return _T_from_extrinsics(profiles[src].get_extrinsics_to(profiles[dst]))
    except RuntimeError:
        return None


def read_recording(camera: str, path: str, timeout_s: float = 600.0) -> Recording:
    """Play a recording back as fast as it can be read (not real time), keeping every frame."""
    import pyrealsense2 as rs

    if not Path(path).is_file():
        raise IngestError(f"camera {camera}: recording {path} does not exist")
    try:
        device = rs.context().load_device(str(path))
    except RuntimeError as e:
        raise IngestError(f"camera {camera}: {path} is not a readable RealSense recording (.bag or .db3): {e}") from e
    playback = device.as_playback()
    playback.set_real_time(False)
    try:
        name = device.get_info(rs.camera_info.name)
    except RuntimeError:
        name = "unknown RealSense device"

    rec = Recording(camera, str(path), name, {})
    profiles, sensors, lock, seen = {}, [], threading.Lock(), {}
    domains: set[str] = set()
    errors: list[Exception] = []  # raised in playback's thread, reported here

    def on_frame(frame):
        stream = _stream_name(frame.get_profile())
        if stream is None:
            return
        try:
            image = _image(frame, stream, f"camera {camera} ({path}) frame {frame.get_frame_number()}")
        except IngestError as e:
            with lock:
                errors.append(e)
            return
        key = (frame.get_timestamp() / 1000.0, frame.get_frame_number())
        with lock:
            if key in seen[stream]:  # delivered again after the rewind below
                return
            seen[stream].add(key)
            domains.add(str(frame.get_frame_timestamp_domain()).split(".")[-1])
            rec.frames[stream].append((*key, image))

    for sensor in device.query_sensors():
        wanted = [p for p in sensor.get_stream_profiles() if _stream_name(p) is not None]
        if not wanted:
            continue
        for p in wanted:
            stream = _stream_name(p)
            profiles[stream] = p
            rec.frames[stream] = []
            seen[stream] = set()
            vp = p.as_video_stream_profile()
            intr = vp.get_intrinsics()
            rec.intrinsics[stream] = {
                "width": intr.width, "height": intr.height, "fps": p.fps(), "model": str(intr.model).split(".")[-1],
                "K": np.array([[intr.fx, 0, intr.ppx], [0, intr.fy, intr.ppy], [0, 0, 1]], dtype=float),
                "dist": np.asarray(list(intr.coeffs)[:5], dtype=float),
            }
        if sensor.is_depth_sensor():
            rec.depth_scale_m = float(sensor.as_depth_sensor().get_depth_scale())
        sensor.open(wanted)
        sensors.append(sensor)
    if not profiles:
        raise IngestError(f"camera {camera}: {path} holds no colour, depth or infrared stream (no frames recorded?)")

    finished = threading.Event()
    # Playback of a short file can start and stop between two polls: listen for the transition instead.
    playback.set_status_changed_callback(lambda status: status == rs.playback_status.stopped and finished.set())
    # Playback starts with the first sensor started: frames of a sensor not yet started would be lost.
    # Hold it paused while all start, then rewind to the beginning (frames read meanwhile come twice).
    playback.pause()
    for sensor in sensors:
        sensor.start(on_frame)
    playback.seek(datetime.timedelta(0))
    playback.resume()
    try:
        if not finished.wait(timeout_s):
            raise IngestError(f"camera {camera}: playback of {path} did not finish within {timeout_s:.0f} s")
    finally:
        for sensor in sensors:
            sensor.stop()
            sensor.close()
    if errors:
        raise errors[0]

    rec.timestamp_domain = ",".join(sorted(domains))
    rec.T_color_depth = _extrinsics(profiles, "depth", "color")
    # The depth frame is the left imager's on D400 units; older recordings only link the two imagers.
    rec.T_irright_depth = _extrinsics(profiles, "depth", "ir_right")
    if rec.T_irright_depth is None:
        rec.T_irright_depth = _extrinsics(profiles, "ir_left", "ir_right")
    for stream, frames in rec.frames.items():
        if not frames:
            raise IngestError(f"camera {camera}: stream {stream} of {path} has no frames (truncated recording?)")
        frames.sort(key=lambda f: f[0])
    return rec


def _nearest_unique(ref: np.ndarray, other: np.ndarray, tolerance: float) -> np.ndarray:
    """For each reference time, the index of the nearest ``other`` time within ``tolerance`` (-1 where none),
    each ``other`` frame used at most once (the closest claim wins). Both arrays sorted, seconds."""
    after = np.clip(np.searchsorted(other, ref), 0, len(other) - 1)
    before = np.clip(after - 1, 0, len(other) - 1)
    idx = np.where(np.abs(other[before] - ref) <= np.abs(other[after] - ref), before, after)
    gap = np.abs(other[idx] - ref)
    match = np.where(gap <= tolerance, idx, -1)
    order = np.lexsort((gap, match))  # by claimed frame, closest claim first
    claimed = match[order]
    repeat = np.r_[False, claimed[1:] == claimed[:-1]] & (claimed >= 0)
    match[order[repeat]] = -1
    return match


def group_streams(rec: Recording, tolerance_s: float | None = None):
    """Frame sets of one camera: times (T,) of the reference stream and, per stream, the frame index used
    for each set. Returns (times, frame_numbers, {stream: (T,) indices}, {stream: frames left out})."""
    ref = "depth" if "depth" in rec.frames else "color" if "color" in rec.frames else next(iter(rec.frames))
    if tolerance_s is None:
        tolerance_s = 1.0 / min(rec.intrinsics[s]["fps"] for s in rec.frames)
    t_ref = np.array([f[0] for f in rec.frames[ref]])
    picks = {ref: np.arange(len(t_ref))}
    keep = np.ones(len(t_ref), bool)
    for stream, frames in rec.frames.items():
        if stream != ref:
            picks[stream] = _nearest_unique(t_ref, np.array([f[0] for f in frames]), tolerance_s)
            keep &= picks[stream] >= 0
    picks = {s: p[keep] for s, p in picks.items()}
    left_out = {s: len(rec.frames[s]) - int(keep.sum()) for s in rec.frames}
    return t_ref[keep], np.array([f[1] for f in rec.frames[ref]])[keep], picks, left_out


def match_cameras(times: list[np.ndarray], tolerance_s: float) -> np.ndarray:
    """(T, C) frame-set indices of framesets seen by every camera, matched to camera 0's by timestamp."""
    columns = [np.arange(len(times[0]))] + [_nearest_unique(times[0], t, tolerance_s) for t in times[1:]]
    index = np.stack(columns, axis=1)
    return index[(index >= 0).all(axis=1)]


def _check_same(values: dict[str, object], what: str, sources: dict[str, str]) -> None:
    distinct = {json.dumps(v) for v in values.values()}
    if len(distinct) > 1:
        listing = ", ".join(f"{c} ({sources[c]}): {v}" for c, v in values.items())
        raise IngestError(f"cameras differ in {what}: {listing}")


def ingest_realsense(cameras: dict[str, str], out: str, scene: str, episode: str, split: str,
                     sync_tolerance_s: float | None = None, max_unmatched: float = 0.1) -> dict:
    recs = [read_recording(cam, path) for cam, path in tqdm(cameras.items(), desc="reading recordings",
                                                             unit="camera", file=sys.stderr)]
    _check_same({r.camera: sorted(r.frames) for r in recs}, "recorded streams", cameras)
    for stream in recs[0].frames:
        _check_same({r.camera: [r.intrinsics[stream]["width"], r.intrinsics[stream]["height"]] for r in recs},
                    f"{stream} resolution", cameras)
    grouped = [group_streams(r) for r in recs]
    for r, g in zip(recs, grouped):
        if not len(g[0]):
            spans = ", ".join(f"{s} {f[0][0]:.3f}..{f[-1][0]:.3f} s" for s, f in r.frames.items())
            raise IngestError(f"camera {r.camera} ({r.path}): no frame set has all its streams within a frame "
                              f"period of each other (stream times {spans}; are they on one clock?)")
    fps = recs[0].intrinsics["depth" if "depth" in recs[0].frames else "color"]["fps"]
    tol = sync_tolerance_s if sync_tolerance_s is not None else 0.5 / fps
    index = match_cameras([g[0] for g in grouped], tol)
    sync = {"tolerance_s": tol, "matched_framesets": int(len(index)), "cameras": {}}
    for c, (r, g) in enumerate(zip(recs, grouped)):
        sync["cameras"][r.camera] = {
            "file": r.path, "timestamp_domain": r.timestamp_domain,
            "frames": {s: len(f) for s, f in r.frames.items()},
            "left_out_within_camera": g[3], "unmatched_across_cameras": int(len(g[0]) - len(index)),
        }
    print(f"sync: {len(index)} framesets matched within {tol * 1000:.1f} ms; "
          + "; ".join(f"{cam}: {v['frames']} frames, {v['left_out_within_camera']} left out within the camera, "
                      f"{v['unmatched_across_cameras']} unmatched across cameras"
                      for cam, v in sync["cameras"].items()), file=sys.stderr)
    if len(index) == 0:
        raise IngestError(f"no frame set is seen by all cameras within {tol * 1000:.1f} ms: "
                          + ", ".join(f"{r.camera} ({r.path}) starts at {g[0][0]:.3f} s" for r, g in zip(recs, grouped))
                          + " (do the recordings share a clock?)")
    for r, g in zip(recs, grouped):
        lost = (len(g[0]) - len(index)) / len(g[0])
        if lost > max_unmatched:
            raise IngestError(f"camera {r.camera} ({r.path}): {len(g[0]) - len(index)} of {len(g[0])} frame sets "
                              f"({lost:.0%}) have no match in every other camera within {tol * 1000:.1f} ms "
                              f"(more than --max-unmatched {max_unmatched:.0%}); frame counts: "
                              + ", ".join(f"{q.camera} {len(h[0])}" for q, h in zip(recs, grouped)))

    streams = [s for s in STREAMS if s in recs[0].frames]
    if "depth" in streams and any(r.depth_scale_m is None for r in recs):
        raise IngestError("a camera records depth without a depth scale: "
                          + ", ".join(r.camera for r in recs if r.depth_scale_m is None))
    C, T = len(recs), len(index)
    config = {"cameras": cameras, "sync_tolerance_s": tol, "max_unmatched": max_unmatched}
    attrs = {"scene": scene, "episode": episode, "split": split, "sequence": "episode", "source": "realsense",
             "device": ", ".join(sorted({r.device for r in recs})), "fps": float(fps), "camera_names": list(cameras),
             "streams": streams, "sync": sync}
    with ArtifactWriter(out, "capture", "ingest", config, **attrs) as g:
        for stream in streams:
            sample = recs[0].frames[stream][0][2]
            arr = frame_array(g, stream, (C, T, *sample.shape), sample.dtype)
            for c, (r, gr) in enumerate(zip(recs, grouped)):
                chosen = gr[2][stream][index[:, c]]
                for t, k in enumerate(chosen):
                    arr[c, t] = r.frames[stream][k][2]
        put(g, "timestamps", np.stack([gr[0][index[:, c]] for c, gr in enumerate(grouped)]),
            {"unit": "s", "note": "reference stream (depth, else colour) of each frame set"})
        put(g, "frame_numbers", np.stack([gr[1][index[:, c]] for c, gr in enumerate(grouped)]).astype(np.int64))
        cal_stream = {"color": "color", "depth": "depth" if "depth" in streams else "ir_left"}
        for key, stream in cal_stream.items():
            if stream in streams:
                put(g, f"K_{key}", np.stack([r.intrinsics[stream]["K"] for r in recs]))
                put(g, f"dist_{key}", np.stack([np.pad(r.intrinsics[stream]["dist"], (0, 5 - len(r.intrinsics[stream]["dist"])))
                                               for r in recs]),
                    {"model": DIST_MODEL, "realsense_models": [r.intrinsics[stream]["model"] for r in recs]})
        if "depth" in streams:
            put(g, "depth_scale_m", np.array([r.depth_scale_m for r in recs]))
            g["depth"].attrs["depth_scale_m"] = recs[0].depth_scale_m
        _put_extrinsics(g, recs, "T_color_depth", "color" in streams and "depth" in streams,
                        "depth frame -> colour frame")
        _put_extrinsics(g, recs, "T_irright_depth", "ir_right" in streams,
                        "depth (infrared-left) frame -> infrared-right frame")
    return sync


def _put_extrinsics(g, recs: list[Recording], name: str, needed: bool, maps: str) -> None:
    if not needed:
        return
    missing = [f"{r.camera} ({r.path})" for r in recs if getattr(r, name) is None]
    if missing:
        raise IngestError(f"no {name} extrinsics recorded for: {', '.join(missing)}")
    put(g, name, np.stack([getattr(r, name) for r in recs]), {"maps": maps})


# -- folders of images -----------------------------------------------------------------------------

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


def _video_frames(path: Path, step: int) -> dict[int, np.ndarray]:
    """{frame index: RGB image} of every ``step``-th frame of a video file."""
    reader = cv2.VideoCapture(str(path))
    if not reader.isOpened():
        raise IngestError(f"{path}: not a readable video")
    frames, index = {}, 0
    while True:
        ok, bgr = reader.read()
        if not ok:
            break
        if index % step == 0:
            frames[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        index += 1
    reader.release()
    return frames


def _frame_files(root: Path, pattern: str, camera: str, step: int = 1) -> dict[int, Path | np.ndarray]:
    """{frame index: file} for one camera (every ``step``-th); a pattern without {frame} is a single
    image (index 0) or a video (one entry per frame, decoded)."""
    rel = pattern.replace("{camera}", camera)
    if "{frame}" not in rel:
        if not (root / rel).is_file():
            return {}
        return _video_frames(root / rel, step) if rel.lower().endswith(VIDEO_SUFFIXES) else {0: root / rel}
    regex = re.compile(re.escape(rel).replace(re.escape("{frame}"), r"(\d+)") + "$")
    found = {}
    for p in root.glob(rel.replace("{frame}", "*")):
        m = regex.search(p.relative_to(root).as_posix())
        if m and int(m.group(1)) % step == 0:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _read_intrinsics(path: Path, cameras: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(C,3,3) K and (C,5) distortion from a .npy (camera order) or a .json keyed by camera."""
    if not path.is_file():
        raise IngestError(f"intrinsics file {path} does not exist")
    if path.suffix == ".npy":
        K = np.load(path)
        if K.shape != (len(cameras), 3, 3):
            raise IngestError(f"{path}: expected intrinsics of shape ({len(cameras)}, 3, 3) for cameras "
                              f"{cameras}, found {K.shape}")
        return K.astype(float), np.zeros((len(cameras), 5))
    if path.suffix == ".json":
        try:
            table = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise IngestError(f"{path}: not valid JSON ({e})") from None
        missing = [c for c in cameras if c not in table]
        if missing:
            raise IngestError(f"{path}: no intrinsics for camera(s) {missing}")
        for c in cameras:
            if not isinstance(table[c], dict) or np.shape(table[c].get("K")) != (3, 3):
                raise IngestError(f"{path}: camera {c} needs a 3x3 'K' (and optionally 'dist', up to 5 "
                                  f"coefficients), found {table[c]!r}")
        K = np.array([table[c]["K"] for c in cameras], dtype=float)
        dist = np.array([np.pad(np.asarray(table[c].get("dist", []), float), (0, 5))[:5] for c in cameras])
        return K, dist
    raise IngestError(f"{path}: intrinsics must be a .npy (C, 3, 3) or a .json keyed by camera")


def _read_image(path: Path | np.ndarray, stream: str) -> np.ndarray:
    if isinstance(path, np.ndarray):  # a decoded video frame
        return path
    if stream == "color":
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise IngestError(f"{path}: not a readable image")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise IngestError(f"{path}: not a readable image")
    if img.dtype != np.uint16 or img.ndim != 2:
        raise IngestError(f"{path}: depth must be a 16-bit single-channel PNG, found {img.dtype} of shape {img.shape}")
    return img


def ingest_images(root: str, cameras: list[str], out: str, color: str, depth: str | None, intrinsics: str,
                  scene: str, episode: str, split: str, fps: float = 30.0, depth_scale_m: float = 0.001,
                  cam_to_world: tuple[str, str] | None = None, step: int = 1, sequence: str = "episode") -> None:
    root_path = Path(root)
    if not root_path.is_dir():
        raise IngestError(f"image folder {root} does not exist")
    if step < 1 or fps <= 0:
        raise IngestError(f"--frame-step must be at least 1 and --fps positive, got {step} and {fps}")
    patterns = {"color": color, **({"depth": depth} if depth else {})}
    files = {s: {c: _frame_files(root_path, p, c, step) for c in cameras} for s, p in patterns.items()}
    for stream, per_cam in files.items():
        for c, found in per_cam.items():
            if not found:
                raise IngestError(f"camera {c}: no {stream} images match {root_path / patterns[stream].replace('{camera}', c)}")
    frames = {c: sorted(files["color"][c]) for c in cameras}
    _check_same({c: len(f) for c, f in frames.items()}, "frame count", {c: root for c in cameras})
    if depth:
        for c in cameras:
            if sorted(files["depth"][c]) != frames[c]:
                raise IngestError(f"camera {c}: colour frames {frames[c][:5]}... and depth frames "
                                  f"{sorted(files['depth'][c])[:5]}... differ ({len(frames[c])} vs {len(files['depth'][c])})")
    K, dist = _read_intrinsics(root_path / intrinsics, cameras)
    C, T = len(cameras), len(frames[cameras[0]])
    first = {s: {c: _read_image(files[s][c][frames[c][0]], s) for c in cameras} for s in patterns}
    for s in patterns:
        _check_same({c: list(first[s][c].shape[:2]) for c in cameras}, f"{s} resolution",
                    {c: patterns[s].replace("{camera}", c) for c in cameras})
    if depth and first["depth"][cameras[0]].shape[:2] != first["color"][cameras[0]].shape[:2]:
        # The depth is taken as registered to the colour camera (its K and pose), pixel for pixel.
        raise IngestError(f"camera {cameras[0]}: depth images are {first['depth'][cameras[0]].shape[:2]} (H, W), "
                          f"colour {first['color'][cameras[0]].shape[:2]}; depth must be registered to the colour "
                          f"camera at its resolution")
    T_cw = _cam_to_world(root_path, cam_to_world, cameras) if cam_to_world else None
    config = {"root": str(root), "cameras": cameras, "patterns": patterns, "intrinsics": intrinsics, "fps": fps,
              "depth_scale_m": depth_scale_m, "cam_to_world": list(cam_to_world) if cam_to_world else None,
              "frame_step": step}
    streams = [s for s in STREAMS if s in patterns]
    if sequence == "calibration":
        episode = split = "calibration"
    attrs = {"scene": scene, "episode": episode, "split": split, "sequence": sequence, "source": "images",
             "device": "image folder", "fps": fps, "camera_names": cameras, "streams": streams,
             "frame_indices": {c: frames[c] for c in cameras}}
    with ArtifactWriter(out, "capture", "ingest", config, **attrs) as g:
        for s in streams:
            sample = first[s][cameras[0]]
            arr = frame_array(g, s, (C, T, *sample.shape), sample.dtype)
            for c, cam in enumerate(tqdm(cameras, desc=f"{s} images", unit="camera", file=sys.stderr)):
                for t, k in enumerate(frames[cam]):
                    img = _read_image(files[s][cam][k], s)
                    if img.shape != sample.shape:
                        raise IngestError(f"camera {cam} frame {k}: shape {img.shape}, expected {sample.shape}")
                    arr[c, t] = img
        put(g, "timestamps", np.array([frames[c] for c in cameras], dtype=float) / fps,
            {"unit": "s", "note": "frame index / fps"})
        put(g, "K_color", K)
        put(g, "dist_color", dist, {"model": DIST_MODEL})
        if depth:
            put(g, "K_depth", K, {"note": "depth registered to the colour camera"})
            put(g, "dist_depth", dist, {"model": DIST_MODEL})
            put(g, "depth_scale_m", np.full(C, depth_scale_m))
            g["depth"].attrs["depth_scale_m"] = depth_scale_m
            put(g, "T_color_depth", np.tile(np.eye(4), (C, 1, 1)), {"maps": "depth frame -> colour frame"})
        if T_cw is not None:
            put(g, "T_cw_color", T_cw, {"maps": "world -> colour frame", "source": "the lab's own calibration"})


def _cam_to_world(root: Path, files: tuple[str, str], cameras: list[str]) -> np.ndarray:
    """(C,4,4) world-to-camera poses from two .npy files under ``root``: camera-to-world rotations (C,3,3)
    and translations (C,3) in metres, in ``cameras`` order."""
    arrays = []
    for name in files:
        try:
            arrays.append(np.load(root / name))
        except (OSError, ValueError) as e:
            raise IngestError(f"--cam-to-world: {root / name} does not load as a .npy array ({e})") from None
    R, t = arrays
    C = len(cameras)
    if R.shape != (C, 3, 3) or t.size != C * 3:
        raise IngestError(f"--cam-to-world {files[0]} {files[1]}: expected rotations ({C}, 3, 3) and translations "
                          f"({C}, 3) for cameras {cameras}, found {R.shape} and {t.shape}")
    return np.stack([invert_T(make_T(R[c], t.reshape(C, 3)[c])) for c in range(C)])


# -- command line ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.ingest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="source", required=True)
    for name in ("realsense", "images"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, help="capture artifact to write (.zarr)")
        p.add_argument("--scene", default="real")
        p.add_argument("--episode", default="test_0000")
        p.add_argument("--split", default="test", choices=["train", "val", "test"])
        if name == "realsense":
            p.add_argument("--camera", action="append", required=True, metavar="NAME=FILE",
                           help="one per camera, in rig order (.bag or .db3)")
            p.add_argument("--sync-tolerance-ms", type=float, help="default: half a frame period")
            p.add_argument("--max-unmatched", type=float, default=0.1,
                           help="largest share of a camera's frame sets allowed to go unmatched")
        else:
            p.add_argument("root", help="folder holding the images and the intrinsics file")
            p.add_argument("--cameras", nargs="+", required=True, help="camera names as they appear in the patterns")
            p.add_argument("--color", default="color/{camera}/{frame}.png")
            p.add_argument("--depth", help="e.g. depth/{camera}/{frame}.png (16-bit, --depth-scale metres per unit)")
            p.add_argument("--depth-scale", type=float, default=0.001)
            p.add_argument("--intrinsics", default="intrinsics.json")
            p.add_argument("--fps", type=float, default=30.0)
            p.add_argument("--frame-step", type=int, default=1, help="keep every n-th frame")
            p.add_argument("--sequence", choices=["episode", "calibration"], default="episode",
                           help="'calibration' for a board sequence the rig is calibrated from")
            p.add_argument("--cam-to-world", nargs=2, metavar=("R.npy", "t.npy"),
                           help="the lab's calibration: camera-to-world rotations (C,3,3) and translations (C,3)")
    args = ap.parse_args(argv)
    try:
        if args.source == "realsense":
            cams = {}
            for item in args.camera:
                name, sep, path = item.partition("=")
                if not sep or not name or not path:
                    raise IngestError(f"--camera {item!r}: expected NAME=FILE")
                if name in cams:
                    raise IngestError(f"--camera {name} given twice")
                cams[name] = path
            tol = None if args.sync_tolerance_ms is None else args.sync_tolerance_ms / 1000
            ingest_realsense(cams, args.out, args.scene, args.episode, args.split, tol, args.max_unmatched)
        else:
            ingest_images(args.root, args.cameras, args.out, args.color, args.depth, args.intrinsics, args.scene,
                          args.episode, args.split, args.fps, args.depth_scale,
                          tuple(args.cam_to_world) if args.cam_to_world else None, args.frame_step, args.sequence)
    except IngestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
