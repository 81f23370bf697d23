"""Stage `depth`: metric depth per camera and frame, registered into the colour camera.

    python -m pipeline.depth --capture results/bowling/capture/train_0000.zarr --config config.yaml \\
        --out results/bowling/depth/train_0000.zarr

``stereo`` (the default) rectifies each unit's infrared pair, matches it with OpenCV StereoSGBM (left-right
check, sub-pixel disparities, occlusion filling; see ``stereo.match``), turns disparity into depth
z = f b / d and registers it into the colour camera through the unit's own depth-to-colour extrinsics
(as a triangle mesh, see ``stereo.register``).
``sensor`` registers the depth the unit recorded instead. Confidence is 255 where the matcher (or the
sensor) measured the pixel and lower where the value was filled in; 0 where there is no depth.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
from tqdm import tqdm

from .artifact import ArtifactWriter, frame_array, open_artifact, put
from .config import stage_main
from .stereo import MatcherParams, disparity_to_depth, match, rectify, register

MEASURED, FILLED = 255, 64


class DepthError(RuntimeError):
    """A capture depth cannot be computed from; the message names the camera or frame."""


def stereo_depth(params: MatcherParams, rect, left: np.ndarray, right: np.ndarray):
    """Depth (H,W) on the rectified left grid, its confidence (H,W), the rectified intrinsics (3,3) and the
    rectified camera's pose in the infrared-left frame (4,4) from one infrared pair."""
    left_r = cv2.remap(left, *rect.maps_left, cv2.INTER_LINEAR)
    right_r = cv2.remap(right, *rect.maps_right, cv2.INTER_LINEAR)
    disparity, matched = match(left_r, right_r, params)
    depth, K_rect, T_left_rect = disparity_to_depth(disparity, rect)
    confidence = np.where(matched, MEASURED, FILLED).astype(np.uint8)
    return depth, confidence, K_rect, T_left_rect


def write_depth(capture_path: str, method: str, params: MatcherParams, out: str) -> dict:
    cap = open_artifact(capture_path, "capture")
    names = list(cap.attrs["camera_names"])
    streams = cap.attrs["streams"]
    need = {"stereo": ["ir_left", "ir_right"], "sensor": ["depth"]}[method]
    for s in need + ["color"]:
        if s not in streams:
            raise DepthError(f"{capture_path}: method '{method}' needs the {s} stream; the capture has {streams}")
    if "T_color_depth" not in cap:
        raise DepthError(f"{capture_path}: no depth-to-colour extrinsics (T_color_depth) to register depth with")
    C, T, H, W = cap["color"].shape[:4]
    if C == 0 or T == 0:
        raise DepthError(f"{capture_path}: {C} cameras and {T} frames of colour; nothing to compute depth for")
    K_color, K_depth = cap["K_color"][:], cap["K_depth"][:]
    T_color_depth = cap["T_color_depth"][:]
    depth_scale = cap["depth_scale_m"][:] if method == "sensor" else None
    rects = []
    if method == "stereo":
        if "T_irright_depth" not in cap:
            raise DepthError(f"{capture_path}: no infrared-left to infrared-right extrinsics (T_irright_depth)")
        hd, wd = cap["ir_left"].shape[2:4]
        dist_depth = cap["dist_depth"][:]
        for c in range(C):
            try:
                rects.append(rectify(K_depth[c], dist_depth[c], K_depth[c], dist_depth[c],
                                     cap["T_irright_depth"][c], (wd, hd)))
            except ValueError as e:
                raise DepthError(f"camera {names[c]}: {e}") from e
        nearest = [params.nearest_depth_m(r.focal_px, r.baseline_m) for r in rects]
        print(f"depth: the matcher's disparity range reaches {min(nearest):.3f} m (camera "
              f"{names[int(np.argmin(nearest))]}); nearer surfaces need a larger depth.matcher.num_disparities",
              file=sys.stderr)
    config = {"method": method, "matcher": vars(params) if method == "stereo" else None}
    attrs = {k: cap.attrs[k] for k in ("scene", "episode", "split", "camera_names")}
    valid_share = np.zeros((C, T))
    with ArtifactWriter(out, "depth", "depth", config, **attrs, method=method, source_capture=str(capture_path),
                        frame="colour camera of each unit") as g:
        depth_arr = frame_array(g, "depth", (C, T, H, W), "float32")
        depth_arr.attrs.update(unit="m", invalid=0)
        conf_arr = frame_array(g, "confidence", (C, T, H, W), "uint8")
        conf_arr.attrs.update(measured=MEASURED, filled=FILLED, none=0)
        for t in tqdm(range(T), desc=f"depth ({method})", unit="frame", file=sys.stderr):
            for c in range(C):
                if method == "stereo":
                    src, conf, K_src, T_depth_src = stereo_depth(params, rects[c], cap["ir_left"][c, t],
                                                                 cap["ir_right"][c, t])
                else:
                    src = cap["depth"][c, t].astype(np.float32) * float(depth_scale[c])
                    conf = np.full(src.shape, MEASURED, np.uint8)
                    K_src, T_depth_src = K_depth[c], np.eye(4)
                depth, confidence = register(src, conf, K_src, T_color_depth[c] @ T_depth_src, K_color[c], (W, H))
                depth_arr[c, t] = depth
                conf_arr[c, t] = confidence
                valid_share[c, t] = (depth > 0).mean()
        if valid_share.max() == 0:
            raise DepthError(f"{capture_path}: no camera has valid depth in any frame")
        put(g, "K", K_color, {"note": "the colour camera's intrinsics: depth is registered into it"})
        put(g, "valid_share", valid_share, {"what": "share of pixels with depth, per camera and frame"})
        if method == "stereo":
            put(g, "nearest_depth_m", np.array(nearest), {"what": "nearest depth the matcher's range reaches, per camera"})
    return {"valid_share": valid_share}


def matcher_params(depth_cfg: dict) -> MatcherParams:
    return MatcherParams(**depth_cfg["matcher"])


def main(argv=None) -> int:
    def run(args, cfg):
        write_depth(args.capture, cfg["method"], matcher_params(cfg), args.out)

    return stage_main(argv, "depth", __doc__, {"capture": "capture artifact of the episode"}, (DepthError,), run)


if __name__ == "__main__":
    sys.exit(main())
