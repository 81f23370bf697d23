"""Stage `calibration`: the rig's cameras in one world frame, from a ChArUco calibration sequence.

    python -m pipeline.calibration --capture results/bowling/capture/calibration.zarr \\
        --config config.yaml --out results/bowling/calibration.zarr

1. ChArUco corners are detected in every camera's colour frames (OpenCV).
2. Intrinsics are the ones the capture recorded, or estimated per camera from the board views
   (``calibration.intrinsics: estimate``; cv2.calibrateCamera).
3. Every view with enough corners gives a board pose (planar PnP); the anchor frame fixes the world:
   ``table`` (the default) takes the board lying flat on the table at the anchor frame as the world
   origin (z up, table plane z = 0, see ``charuco.T_world_board_on_table``); ``board`` takes the board
   frame itself. Camera and board poses are chained outwards from the anchor over shared views.
4. All camera extrinsics and board poses are refined jointly (bundle adjustment with scipy
   least_squares, Huber loss, sparse Jacobian) over every corner observation.
5. A synchronisation check (on the first adjustment, before outliers are dropped) adjusts the rig again
   with each camera's frames paired one frame earlier and later than recorded; a camera that fits far
   better shifted is named (``frame_lag``).

The artifact holds world-to-camera extrinsics of the colour cameras and, through the recorded
extrinsics between a unit's sensors, of the depth and right infrared cameras; per-camera reprojection
error and observation counts.
"""
from __future__ import annotations

import argparse
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import lil_matrix
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from .artifact import ArtifactError, ArtifactWriter, open_artifact, put
from .charuco import MIN_CORNERS, Detector, T_world_board_on_table, board_corners
from .config import ConfigError, read_mapping, read_scene_spec, validate_section
from .geometry import invert_T, make_T

PNP_MAX_RMS_PX = 3.0  # a view whose own board pose fits worse than this is a misdetection
OUTLIER_SIGMAS = 5.0  # corner observations beyond this many robust sigmas of the residuals are dropped ...
OUTLIER_MIN_PX = 0.75  # ... but never those within this many pixels
LAG_SHIFTS = (-1, 0, 1)  # frame pairings tried per camera by the synchronisation check
LAG_GAIN = 0.5  # a camera is reported out of step where another pairing at least halves its residual


class CalibrationError(RuntimeError):
    """The sequence cannot calibrate the rig; the message names the camera."""


@dataclass
class Observations:
    """Corner observations: camera (n,), frame (n,), corner id (n,), pixel (n,2)."""

    camera: np.ndarray
    frame: np.ndarray
    corner: np.ndarray
    uv: np.ndarray

    def select(self, mask: np.ndarray) -> "Observations":
        return Observations(self.camera[mask], self.frame[mask], self.corner[mask], self.uv[mask])


def detect(color, board_cfg: dict) -> tuple[Observations, np.ndarray]:
    """Corners in (C, T, H, W, 3) colour frames (an array, or a zarr array read one image at a time);
    also (C, T) corner counts per view."""
    detector = Detector(board_cfg)
    C, T = color.shape[:2]
    cams, frames, corners, uvs = [], [], [], []
    counts = np.zeros((C, T), int)
    for c in tqdm(range(C), desc="detecting ChArUco corners", unit="camera", file=sys.stderr):
        for t in range(T):
            ids, uv = detector.detect(color[c, t])
            counts[c, t] = len(ids)
            if len(ids) >= MIN_CORNERS:
                cams.append(np.full(len(ids), c))
                frames.append(np.full(len(ids), t))
                corners.append(ids)
                uvs.append(uv)
    if not cams:
        raise CalibrationError("no camera sees the board in any frame")
    return Observations(np.concatenate(cams), np.concatenate(frames), np.concatenate(corners),
                        np.concatenate(uvs)), counts


def project(K: np.ndarray, dist: np.ndarray, p_cam: np.ndarray) -> np.ndarray:
    """(N,3) camera-frame points -> (N,2) pixels under the OpenCV (k1, k2, p1, p2, k3) model.
    K (N,3,3) and dist (N,5) per point, or broadcastable."""
    x, y = p_cam[:, 0] / p_cam[:, 2], p_cam[:, 1] / p_cam[:, 2]
    k1, k2, p1, p2, k3 = (dist[..., i] for i in range(5))
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([K[..., 0, 0] * xd + K[..., 0, 2], K[..., 1, 1] * yd + K[..., 1, 2]], axis=-1)


def estimate_intrinsics(obs: Observations, corners3d: np.ndarray, names: list[str], size: tuple[int, int]):
    """(C,3,3) K and (C,5) distortion per camera (``names``) from its board views (cv2.calibrateCamera)."""
    Ks, dists = [], []
    for c, name in enumerate(names):
        frames = np.unique(obs.frame[obs.camera == c])
        obj = [corners3d[obs.corner[(obs.camera == c) & (obs.frame == t)]].astype(np.float32) for t in frames]
        img = [obs.uv[(obs.camera == c) & (obs.frame == t)].astype(np.float32) for t in frames]
        if len(frames) < 3:
            raise CalibrationError(f"camera {name}: {len(frames)} board views are too few to estimate intrinsics "
                                   f"(need 3)")
        _, K, dist, _, _ = cv2.calibrateCamera(obj, img, size, None, None)
        Ks.append(K)
        dists.append(np.ravel(dist)[:5])
    return np.stack(Ks), np.stack(dists)


def board_poses(obs: Observations, corners3d, K, dist, C, T) -> dict[tuple[int, int], np.ndarray]:
    """{(camera, frame): T_cam_board} from planar PnP; misfitting views are left out."""
    poses = {}
    for c in range(C):
        for t in np.unique(obs.frame[obs.camera == c]):
            m = (obs.camera == c) & (obs.frame == t)
            obj, img = corners3d[obs.corner[m]], obs.uv[m]
            n, rvecs, tvecs, errs = cv2.solvePnPGeneric(obj, img, K[c], dist[c], flags=cv2.SOLVEPNP_IPPE)
            if n == 0:
                continue
            best = int(np.argmin(np.ravel(errs)))
            if float(np.ravel(errs)[best]) > PNP_MAX_RMS_PX:
                continue
            poses[(c, int(t))] = make_T(cv2.Rodrigues(rvecs[best])[0], np.ravel(tvecs[best]))
    return poses


def chain(poses: dict, C: int, T: int, anchor_frame: int, T_world_anchor: np.ndarray, names: list[str]):
    """Initial T_cw (C,4,4) and T_world_board (T,4,4) by walking the camera-frame graph from the anchor."""
    T_cw = np.full((C, 4, 4), np.nan)
    T_wb = np.full((T, 4, 4), np.nan)
    T_wb[anchor_frame] = T_world_anchor
    queue = deque([("frame", anchor_frame)])
    while queue:
        kind, i = queue.popleft()
        for (c, t), T_cb in poses.items():
            if kind == "frame" and t == i and np.isnan(T_cw[c, 0, 0]):
                T_cw[c] = T_cb @ invert_T(T_wb[t])
                queue.append(("camera", c))
            elif kind == "camera" and c == i and np.isnan(T_wb[t, 0, 0]):
                T_wb[t] = invert_T(T_cw[c]) @ T_cb
                queue.append(("frame", t))
    missing = [names[c] for c in range(C) if np.isnan(T_cw[c, 0, 0])]
    if missing:
        raise CalibrationError(
            f"camera(s) {', '.join(missing)} share no board view with the anchor frame {anchor_frame} "
            "or with cameras linked to it; record views of the board seen by them and a placed camera together")
    return T_cw, T_wb


def _pack(T: np.ndarray) -> np.ndarray:
    return np.concatenate([Rotation.from_matrix(T[:3, :3]).as_rotvec(), T[:3, 3]])


def _unpack(x: np.ndarray) -> np.ndarray:
    """(n,6) rotation vectors and translations -> (n,4,4)."""
    out = np.tile(np.eye(4), (len(x), 1, 1))
    out[:, :3, :3] = Rotation.from_rotvec(x[:, :3]).as_matrix()
    out[:, :3, 3] = x[:, 3:]
    return out


def bundle_adjust(obs: Observations, corners3d, K, dist, T_cw, T_wb, anchor_frame: int):
    """Jointly refine camera extrinsics and board poses (the anchor frame's board stays fixed)."""
    C = len(T_cw)
    free = [t for t in range(len(T_wb)) if t != anchor_frame and not np.isnan(T_wb[t, 0, 0])]
    slot = {t: i for i, t in enumerate(free)}
    keep = np.array([f == anchor_frame or f in slot for f in obs.frame])
    obs = obs.select(keep)
    n = len(obs.camera)
    X = corners3d[obs.corner]
    Kc, dc = K[obs.camera], dist[obs.camera]
    is_anchor = obs.frame == anchor_frame
    board_idx = np.array([slot.get(int(f), 0) for f in obs.frame])

    def residuals(x):
        cams = _unpack(x[:6 * C].reshape(C, 6))
        boards = _unpack(x[6 * C:].reshape(-1, 6)) if free else np.zeros((1, 4, 4))
        T_wb_obs = np.where(is_anchor[:, None, None], T_wb[anchor_frame], boards[board_idx])
        p_world = np.einsum("nij,nj->ni", T_wb_obs[:, :3, :3], X) + T_wb_obs[:, :3, 3]
        Tc = cams[obs.camera]
        p_cam = np.einsum("nij,nj->ni", Tc[:, :3, :3], p_world) + Tc[:, :3, 3]
        return (project(Kc, dc, p_cam) - obs.uv).ravel()

    sparsity = lil_matrix((2 * n, 6 * C + 6 * len(free)), dtype=int)
    rows = np.arange(n)
    for k in range(6):
        for r in (2 * rows, 2 * rows + 1):
            sparsity[r, 6 * obs.camera + k] = 1
            moving = ~is_anchor
            sparsity[r[moving], 6 * C + 6 * board_idx[moving] + k] = 1
    x0 = np.concatenate([np.concatenate([_pack(T) for T in T_cw])] + [_pack(T_wb[t]) for t in free])
    result = least_squares(residuals, x0, jac_sparsity=sparsity, loss="huber", f_scale=1.0, x_scale="jac",
                           method="trf", max_nfev=200)
    T_cw = _unpack(result.x[:6 * C].reshape(C, 6))
    T_wb = T_wb.copy()
    if free:
        T_wb[free] = _unpack(result.x[6 * C:].reshape(-1, 6))
    err = np.linalg.norm(result.fun.reshape(-1, 2), axis=1)
    return T_cw, T_wb, obs, err


def frame_lag_check(obs: Observations, err: np.ndarray, corners3d, K, dist, T_cw, T_wb, anchor_frame: int):
    """Whether each camera's frames are paired with the others' in step, from all corner observations
    ``obs`` and their (n,) residuals ``err`` as first adjusted (before outliers are dropped: a lagging
    camera's views would be dropped as outliers). Per camera c and shift s in ``LAG_SHIFTS``: camera c's
    frame t is taken to show the board of frame t + s, the rig is adjusted again and the median of camera
    c's corner residuals kept. Returns the (C, len(LAG_SHIFTS)) medians in px (NaN where a shift leaves the
    camera no view shared with the others) and the (C,) shift each camera fits best where it at least
    halves the median of the recorded pairing (0 otherwise): -1 says the camera runs a frame behind.
    The calibration itself keeps the recorded pairing; the check names a lag for the user to fix."""
    C, T = len(T_cw), len(T_wb)
    residual = np.full((C, len(LAG_SHIFTS)), np.nan)
    for c in range(C):
        for i, shift in enumerate(LAG_SHIFTS):
            if shift == 0:
                residual[c, i] = np.median(err[obs.camera == c])
                continue
            frame = np.where(obs.camera == c, obs.frame + shift, obs.frame)
            keep = (frame >= 0) & (frame < T)
            shifted = Observations(obs.camera[keep], frame[keep], obs.corner[keep], obs.uv[keep])
            _, _, kept, shifted_err = bundle_adjust(shifted, corners3d, K, dist, T_cw, T_wb, anchor_frame)
            if (kept.camera == c).any():
                residual[c, i] = np.median(shifted_err[kept.camera == c])
    recorded = residual[:, LAG_SHIFTS.index(0)]
    best = np.argmin(np.where(np.isfinite(residual), residual, np.inf), axis=1)
    lag = np.where(residual[np.arange(C), best] < LAG_GAIN * recorded, np.asarray(LAG_SHIFTS)[best], 0)
    return residual, lag


def calibrate(color, K, dist, board_cfg: dict, names: list[str], intrinsics: str = "recording",
              anchor: str = "table", anchor_frame: int | None = None) -> dict:
    C, T = color.shape[:2]
    corners3d = board_corners(board_cfg)
    obs, counts = detect(color, board_cfg)
    for c in range(C):
        views = int((counts[c] >= MIN_CORNERS).sum())
        if views == 0:
            raise CalibrationError(
                f"camera {names[c]} never sees the board: 0 of {T} frames had {MIN_CORNERS} or more ChArUco corners "
                f"(corners found per frame: {counts[c].tolist()})")
    if intrinsics == "estimate":
        K, dist = estimate_intrinsics(obs, corners3d, names, (color.shape[3], color.shape[2]))
    poses = board_poses(obs, corners3d, K, dist, C, T)
    if anchor_frame is None:
        seen = np.array([sum((c, t) in poses for c in range(C)) for t in range(T)])
        anchor_frame = 0 if anchor == "table" else int(np.argmax(seen))
    if not any(t == anchor_frame for _, t in poses):
        raise CalibrationError(f"no camera sees the board at the anchor frame {anchor_frame}")
    T_world_anchor = T_world_board_on_table(board_cfg) if anchor == "table" else np.eye(4)
    T_cw, T_wb = chain(poses, C, T, anchor_frame, T_world_anchor, names)
    T_cw, T_wb, used, err = bundle_adjust(obs, corners3d, K, dist, T_cw, T_wb, anchor_frame)
    lag_residual, lag = frame_lag_check(used, err, corners3d, K, dist, T_cw, T_wb, anchor_frame)
    # Misplaced corners (a subpixel refinement that slid to a marker edge) would pull the fit: drop
    # observations far outside the robust spread of the residuals and adjust again.
    limit = max(OUTLIER_MIN_PX, OUTLIER_SIGMAS * 1.4826 * float(np.median(err)))
    inlier = err <= limit
    rejected = np.bincount(used.camera[~inlier], minlength=C)
    T_cw, T_wb, used, err = bundle_adjust(used.select(inlier), corners3d, K, dist, T_cw, T_wb, anchor_frame)
    # Per view: a camera whose views all fit badly has wrong intrinsics; a frame that fits badly in every
    # camera moved between their exposures (sync, motion blur). The per-camera figures are their sums.
    view = used.camera * T + used.frame
    n = np.bincount(view, minlength=C * T).reshape(C, T)
    sq = np.bincount(view, weights=err**2, minlength=C * T).reshape(C, T)
    view_rms = np.full((C, T), np.nan)
    view_rms[n > 0] = np.sqrt(sq[n > 0] / n[n > 0])
    return {"T_cw": T_cw, "T_world_board": T_wb, "K": K, "dist": dist, "view_rms_px": view_rms,
            "reproj_rms_px": np.sqrt(sq.sum(axis=1) / n.sum(axis=1)),
            "reproj_rms_all_px": float(np.sqrt(np.mean(err**2))), "corner_counts": counts,
            "n_views": (n > 0).sum(axis=1), "n_corners": n.sum(axis=1), "n_rejected": rejected, "outlier_limit_px": limit,
            "anchor": anchor, "anchor_frame": anchor_frame, "lag_residual_px": lag_residual, "frame_lag": lag}


def write_calibration(capture_path: str, board_cfg: dict, intrinsics: str, anchor: str, out: str,
                      scene: str | None = None) -> dict:
    cap = open_artifact(capture_path, "capture")
    names = list(cap.attrs["camera_names"])
    result = calibrate(cap["color"], cap["K_color"][:], cap["dist_color"][:], board_cfg, names, intrinsics, anchor)
    config = {"board": board_cfg, "intrinsics": intrinsics, "anchor": anchor}
    attrs = {"scene": scene or cap.attrs["scene"], "episode": "calibration", "split": "calibration",
             "camera_names": names, "source_capture": str(capture_path), "anchor": anchor,
             "anchor_frame": result["anchor_frame"], "intrinsics_source": intrinsics,
             "reproj_rms_px": result["reproj_rms_all_px"]}
    with ArtifactWriter(out, "calibration", "calibration", config, **attrs) as g:
        put(g, "T_cw_color", result["T_cw"], {"maps": "world -> colour frame"})
        put(g, "K_color", result["K"])
        put(g, "dist_color", result["dist"], {"model": "OpenCV (k1, k2, p1, p2, k3)"})
        if "T_color_depth" in cap:
            T_cw_depth = invert_T(cap["T_color_depth"][:]) @ result["T_cw"]
            put(g, "T_cw_depth", T_cw_depth, {"maps": "world -> depth (infrared-left) frame"})
            put(g, "K_depth", cap["K_depth"][:])
            put(g, "dist_depth", cap["dist_depth"][:], {"model": "OpenCV (k1, k2, p1, p2, k3)"})
            if "T_irright_depth" in cap:
                put(g, "T_cw_irright", cap["T_irright_depth"][:] @ T_cw_depth, {"maps": "world -> infrared-right frame"})
        put(g, "T_world_board", result["T_world_board"], {"maps": "board -> world per frame; NaN where not seen"})
        put(g, "reproj_rms_px", result["reproj_rms_px"], {"unit": "px", "per": "camera"})
        put(g, "view_rms_px", result["view_rms_px"], {"unit": "px", "per": "camera and frame; NaN where not adjusted"})
        put(g, "n_views", result["n_views"], {"what": "frames whose board pose entered the adjustment, per camera"})
        put(g, "n_corners", result["n_corners"], {"what": "corner observations in the adjustment, per camera"})
        put(g, "n_rejected", result["n_rejected"],
            {"what": "corner observations dropped as outliers, per camera", "limit_px": result["outlier_limit_px"]})
        put(g, "corner_counts", result["corner_counts"], {"what": "corners detected per camera and frame"})
        put(g, "lag_residual_px", result["lag_residual_px"],
            {"unit": "px", "shifts": list(LAG_SHIFTS),
             "what": "median corner residual per camera with its frame t paired with the board of frame t + shift"})
        put(g, "frame_lag", result["frame_lag"],
            {"what": "per camera, the shift that at least halves its median residual (0: in step; -1: a frame behind)"})
    return {**result, "camera_names": names}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.calibration", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", required=True, help="capture artifact of the calibration sequence")
    ap.add_argument("--config", help="config.yaml (with --scene): its calibration section")
    ap.add_argument("--scene")
    ap.add_argument("--spec", help="the scene's validated config section as JSON (what Snakemake passes)")
    ap.add_argument("--board", help="instead of a config: a YAML file describing the board "
                                    "(the keys of calibration.board in config.yaml)")
    ap.add_argument("--intrinsics", choices=["recording", "estimate"],
                    help="with --board (default recording); a config says it in calibration.intrinsics")
    ap.add_argument("--anchor", choices=["table", "board"], default="table",
                    help="world frame: the board flat on the table at frame 0 (z up), or the board frame itself "
                         "at the frame seen by the most cameras")
    ap.add_argument("--out", required=True, help="calibration artifact to write (.zarr)")
    args = ap.parse_args(argv)
    try:
        if args.board:
            board = validate_section(read_mapping(Path(args.board).read_text(), args.board), "calibration/board",
                                     args.board)
            intrinsics, scene = args.intrinsics or "recording", None
        else:
            spec = read_scene_spec(args.config, args.scene, args.spec)
            if "calibration" not in spec:
                raise ConfigError("the spec has no calibration section")
            board, intrinsics, scene = spec["calibration"]["board"], spec["calibration"]["intrinsics"], spec["name"]
        result = write_calibration(args.capture, board, intrinsics, args.anchor, args.out, scene)
    except (OSError, ConfigError, ArtifactError, CalibrationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("reprojection RMS per camera (px): " + ", ".join(f"{r:.3f}" for r in result["reproj_rms_px"]),
          file=sys.stderr)
    as_paired = LAG_SHIFTS.index(0)
    for c in np.flatnonzero(result["frame_lag"]):
        shift = int(result["frame_lag"][c])
        print(f"warning: camera {result['camera_names'][c]} runs a frame {'behind' if shift < 0 else 'ahead of'} "
              f"the others: its frame t fits the board of their frame t{shift:+d} (median corner residual "
              f"{result['lag_residual_px'][c, as_paired]:.2f} px as paired, "
              f"{result['lag_residual_px'][c, LAG_SHIFTS.index(shift)]:.2f} px shifted); the calibration keeps the "
              "recorded pairing: check the recording's synchronisation", file=sys.stderr)
    view_rms = np.nan_to_num(result["view_rms_px"], nan=-1.0)
    worst = np.argsort(view_rms, axis=None)[::-1][:3]
    views = zip(*np.unravel_index(worst, view_rms.shape))
    print("worst views (camera frame: RMS px): "
          + ", ".join(f"{result['camera_names'][c]} {t}: {view_rms[c, t]:.2f}" for c, t in views), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
