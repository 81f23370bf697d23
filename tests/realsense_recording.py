"""Write small RealSense recordings (ROS2 .db3) with pyrealsense2's software_device and recorder."""
from __future__ import annotations

import numpy as np

# Depth -> colour extrinsics of the written device: a small rotation about y and the D455's offset.
ANGLE = np.radians(3.0)
R_COLOR_DEPTH = np.array([[np.cos(ANGLE), 0, np.sin(ANGLE)], [0, 1, 0], [-np.sin(ANGLE), 0, np.cos(ANGLE)]])
T_COLOR_DEPTH = np.array([-0.059, 0.001, 0.002])
BASELINE = 0.095


def pixel_value(camera: int, frame: int, stream: int) -> int:
    """What every pixel of a frame holds, so a test can tell which frame ended up where."""
    return (camera * 40 + frame * 4 + stream) % 250


def write_recording(path, camera: int, frames: list[int], period_s: float = 1 / 30, t0_s: float = 100.0,
                    jitter_s: float = 0.0, size=(64, 48), fps: int = 30, color_fx: float = 60.0) -> None:
    """A four-stream (depth, infrared 1 and 2, colour) recording of the given frame indices."""
    import pyrealsense2 as rs

    W, H = size
    dev = rs.software_device()
    dev.register_info(rs.camera_info.name, "test D455")
    stereo, rgb = dev.add_sensor("Stereo Module"), dev.add_sensor("RGB Camera")

    def stream(kind, index, uid, fmt, bpp, fx):
        intr = rs.intrinsics()
        intr.width, intr.height, intr.fx, intr.fy = W, H, fx, fx
        intr.ppx, intr.ppy, intr.model, intr.coeffs = W / 2 - 0.5, H / 2 - 0.5, rs.distortion.brown_conrady, [0.0] * 5
        s = rs.video_stream()
        s.type, s.index, s.uid, s.width, s.height, s.fps, s.bpp, s.fmt, s.intrinsics = \
            kind, index, uid, W, H, fps, bpp, fmt, intr
        return s

    p_depth = stereo.add_video_stream(stream(rs.stream.depth, 0, 0, rs.format.z16, 2, 50.0))
    p_ir1 = stereo.add_video_stream(stream(rs.stream.infrared, 1, 1, rs.format.y8, 1, 50.0))
    p_ir2 = stereo.add_video_stream(stream(rs.stream.infrared, 2, 2, rs.format.y8, 1, 50.0))
    p_color = rgb.add_video_stream(stream(rs.stream.color, 0, 3, rs.format.rgb8, 3, color_fx))
    stereo.add_read_only_option(rs.option.depth_units, 0.001)

    def extrinsics(R, t):
        e = rs.extrinsics()
        e.rotation = list(np.asarray(R).T.ravel())  # column-major, as librealsense stores it
        e.translation = list(t)
        return e

    p_depth.register_extrinsics_to(p_color, extrinsics(R_COLOR_DEPTH, T_COLOR_DEPTH))
    p_depth.register_extrinsics_to(p_ir2, extrinsics(np.eye(3), [-BASELINE, 0, 0]))
    recorder = rs.recorder(str(path), dev)
    sink = rs.frame_queue(100)
    stereo.open([p_depth, p_ir1, p_ir2])
    rgb.open(p_color)
    stereo.start(sink)
    rgb.start(sink)
    rng = np.random.default_rng(camera)
    keep = []  # pixel buffers must outlive the frames that point at them
    for n in frames:
        ts_ms = (t0_s + n * period_s + rng.uniform(-jitter_s, jitter_s)) * 1000
        for k, (sensor, profile, bpp, shape, dtype) in enumerate([
                (stereo, p_depth, 2, (H, W), np.uint16), (stereo, p_ir1, 1, (H, W), np.uint8),
                (stereo, p_ir2, 1, (H, W), np.uint8), (rgb, p_color, 3, (H, W, 3), np.uint8)]):
            pixels = np.full(shape, pixel_value(camera, n, k), dtype)
            keep.append(pixels)
            f = rs.software_video_frame()
            f.pixels, f.stride, f.bpp, f.timestamp = pixels, W * bpp, bpp, ts_ms
            f.domain, f.frame_number, f.profile = rs.timestamp_domain.global_time, n, profile.as_video_stream_profile()
            sensor.on_video_frame(f)
        while sink.poll_for_frame():
            pass
    for sensor in (stereo, rgb):
        sensor.stop()
        sensor.close()
    del recorder
