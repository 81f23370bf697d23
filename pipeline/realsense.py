"""A simulated Intel RealSense D455: colour, a stereo infrared pair with a dot projector, and on-chip depth.

Frames of one unit (RealSense conventions): the depth frame is the infrared-left imager; infrared-right
sits ``baseline_m`` along its +x; colour and projector are offset along x too. World poses are only in
the ground truth: the capture holds what a real unit reports (intrinsics, extrinsics between its streams,
depth scale, timestamps).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import intrinsics_from_hfov, look_at_T_cw, make_T
from .render import PinholeCamera, Projector, shade_color, shade_ir, trace


@dataclass
class D455:
    name: str
    depth: PinholeCamera  # infrared left
    ir_right: PinholeCamera
    color: PinholeCamera
    projector: Projector
    T_color_depth: np.ndarray  # (4,4) depth frame -> colour frame
    T_irright_depth: np.ndarray  # (4,4) depth frame -> infrared-right frame
    cfg: dict

    @property
    def baseline(self) -> float:
        return self.cfg["depth"]["baseline_m"]


def _offset_T(offset) -> np.ndarray:
    """Transform from the depth frame into a sensor whose centre sits at ``offset`` (depth frame), same axes."""
    return make_T(np.eye(3), -np.asarray(offset, dtype=float))


def build_rig(rig_cfg: dict, seed: int = 0) -> list[D455]:
    cams = []
    wc, hc = rig_cfg["color"]["resolution"]
    wd, hd = rig_cfg["depth"]["resolution"]
    K_c = intrinsics_from_hfov(wc, hc, np.radians(rig_cfg["color"]["hfov_deg"]))
    K_d = intrinsics_from_hfov(wd, hd, np.radians(rig_cfg["depth"]["hfov_deg"]))
    K_p = intrinsics_from_hfov(wd, hd, np.radians(rig_cfg["projector"]["hfov_deg"]))
    T_rd = _offset_T([rig_cfg["depth"]["baseline_m"], 0, 0])
    T_cd = _offset_T(rig_cfg["color"]["offset_m"])
    T_pd = _offset_T(rig_cfg["projector"]["offset_m"])
    for i, cam in enumerate(rig_cfg["cameras"]):
        T_dw = look_at_T_cw(cam["position"], rig_cfg["look_at"])
        pr = rig_cfg["projector"]
        # Each unit has its own fixed dot pattern.
        projector = Projector.make(K_p, wd, hd, T_pd @ T_dw, pr["dot_density"], pr["dot_sigma_px"], pr["power"],
                                   np.random.default_rng([seed, i]))
        cams.append(D455(
            name=cam["name"],
            depth=PinholeCamera(K_d, wd, hd, T_dw),
            ir_right=PinholeCamera(K_d, wd, hd, T_rd @ T_dw),
            color=PinholeCamera(K_c, wc, hc, T_cd @ T_dw),
            projector=projector,
            T_color_depth=T_cd,
            T_irright_depth=T_rd,
            cfg=rig_cfg,
        ))
    return cams


def _quantise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noisy = img * 255.0 + rng.normal(0, sigma, img.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def render_unit(unit: D455, objects, table, rng: np.random.Generator) -> dict:
    """One frame of one unit: sensor images and exact ground truth.

    Returns color (Hc,Wc,3) u8, ir_left/ir_right (Hd,Wd) u8, depth (Hd,Wd) u16 in depth_scale units, and
    ground truth: depth_color/depth_ir (metres, inf where nothing), ids_color/ids_ir (u16).
    """
    lighting = unit.cfg["lighting"]
    out = {}
    # Infrared pair (and exact depth in both imagers).
    ir = {}
    for key, cam in (("ir_left", unit.depth), ("ir_right", unit.ir_right)):
        hits = trace(objects, table, *cam.rays())
        img = shade_ir(objects, hits, unit.projector, lighting["ir_ambient"]).reshape(cam.height, cam.width)
        ir[key] = (hits, img)
        out[key] = _quantise(img, unit.cfg["depth"]["ir_noise_sigma"], rng)
    hits_l = ir["ir_left"][0]
    out["depth_ir"] = hits_l.t.reshape(unit.depth.height, unit.depth.width).astype(np.float32)
    out["ids_ir"] = hits_l.ids.reshape(unit.depth.height, unit.depth.width).astype(np.uint16)
    depth_right = ir["ir_right"][0].t.reshape(unit.depth.height, unit.depth.width)
    out["depth"] = sensor_depth(out["depth_ir"], depth_right, unit, rng)

    # Colour: pixel-centre rays give the image and the ground truth; pixels at silhouette edges are
    # supersampled so edges are anti-aliased as a real sensor integrates them.
    cam = unit.color
    hits = trace(objects, table, *cam.rays())
    rgb = shade_color(objects, hits, lighting)
    ids = hits.ids.reshape(cam.height, cam.width)
    z = np.where(np.isfinite(hits.t), hits.t, 1e3).reshape(cam.height, cam.width).astype(np.float32)
    k = np.ones((3, 3), np.uint8)
    edge = (cv2.dilate(ids.astype(np.float32), k) != cv2.erode(ids.astype(np.float32), k)) | \
           ((cv2.dilate(z, k) - cv2.erode(z, k)) > 0.01)
    idx = np.nonzero(edge.ravel())[0]
    s = unit.cfg["color"]["supersample"]
    if s > 1 and len(idx):
        acc = np.zeros((len(idx), 3))
        offsets = [((i + 0.5) / s - 0.5, (j + 0.5) / s - 0.5) for j in range(s) for i in range(s)]
        for off in offsets:
            acc += shade_color(objects, trace(objects, table, *cam.rays(off, idx)), lighting)
        rgb[idx] = acc / len(offsets)
    img = rgb.reshape(cam.height, cam.width, 3)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.4)  # lens and demosaicing blur
    out["color"] = _quantise(img, unit.cfg["color"]["noise_sigma"], rng)
    out["depth_color"] = hits.t.reshape(cam.height, cam.width).astype(np.float32)
    out["ids_color"] = ids.astype(np.uint16)
    return out


def sensor_depth(z_left: np.ndarray, z_right: np.ndarray, unit: D455, rng: np.random.Generator) -> np.ndarray:
    """The unit's own depth image (uint16, depth_scale units, 0 = invalid) from exact depth.

    Models the on-chip stereo matcher: disparity noise of ``subpixel_noise_px`` (so depth error grows as
    z^2), no depth where the right imager cannot see the point, dropouts beside depth edges and at random,
    and the working range.
    """
    dc = unit.cfg["depth"]
    f, b = unit.depth.K[0, 0], dc["baseline_m"]
    h, w = z_left.shape
    z = np.where(np.isfinite(z_left), z_left, 0.0)
    valid = (z > dc["min_z_m"]) & (z < dc["max_z_m"])
    disp = np.where(valid, f * b / np.maximum(z, 1e-6), 0.0)
    # Occlusion: the point's pixel in the right image must see the same surface.
    u = np.arange(w)[None, :] - disp
    ur = np.clip(np.rint(u).astype(int), 0, w - 1)
    zr = z_right[np.arange(h)[:, None], ur]
    valid &= (u >= 0) & (np.abs(zr - z) < 0.01 * z + 0.002)
    # Edges: flying pixels are dropped by the sensor's filters, with a chance.
    zmax = cv2.dilate(z.astype(np.float32), np.ones((3, 3), np.uint8))
    zmin = cv2.erode(np.where(z > 0, z, 1e3).astype(np.float32), np.ones((3, 3), np.uint8))
    edge = (zmax - zmin) > 0.02
    valid &= ~(edge & (rng.random((h, w)) < dc["edge_dropout"]))
    valid &= rng.random((h, w)) >= dc["random_dropout"]
    disp_noisy = disp + rng.normal(0, dc["subpixel_noise_px"], (h, w))
    depth = np.where(valid & (disp_noisy > 0), f * b / np.maximum(disp_noisy, 1e-6), 0.0)
    return np.clip(np.rint(depth / dc["depth_scale_m"]), 0, 65535).astype(np.uint16)
