"""``python -m pipeline inspect PATH [--png FILE]``: print an artifact's tree and draw a picture of it.

The tree lists every group and array with shape, dtype, chunks, value range and attributes. With
``--png``, a capture gives a contact sheet (rows: cameras; columns: colour, depth and infrared at the
first, middle and last frame) and a ground truth gives instance ids and true depth likewise.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import zarr
from scipy import ndimage

from .artifact import SCHEMAS, ArtifactError, open_artifact
from .geometry import project

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")

MAX_RANGE_BYTES = 256 * 2**20


def _fmt_attr(value, width=100) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _value_range(arr: zarr.Array) -> str:
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        return ""
    if arr.nbytes > MAX_RANGE_BYTES and arr.ndim > 2:  # sample a few leading-index slices
        picks = np.linspace(0, arr.shape[0] - 1, 3).astype(int)
        data = np.stack([arr[i] for i in picks])
        note = " (sampled)"
    else:
        data, note = arr[...], ""
    if data.dtype.kind == "f":
        finite = data[np.isfinite(data)]
        if finite.size == 0:
            return "  range: no finite values"
        return f"  range: [{finite.min():.6g}, {finite.max():.6g}]{note}"
    return f"  range: [{data.min()}, {data.max()}]{note}"


def tree(group: zarr.Group, indent: str = "") -> list[str]:
    lines = []
    for key, value in sorted(dict(group.attrs).items()):
        lines.append(f"{indent}@{key} = {_fmt_attr(value)}")
    for name, arr in sorted(group.arrays()):
        lines.append(f"{indent}{name}  {arr.shape} {arr.dtype} chunks={arr.chunks}{_value_range(arr)}")
        for key, value in sorted(dict(arr.attrs).items()):
            lines.append(f"{indent}    @{key} = {_fmt_attr(value)}")
    for name, sub in sorted(group.groups()):
        lines.append(f"{indent}{name}/")
        lines += tree(sub, indent + "    ")
    return lines


def colourise_depth(depth_m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H,W) metres -> (H,W,3) uint8 RGB, turbo colour map; black where invalid (0, nan or inf)."""
    valid = np.isfinite(depth_m) & (depth_m > 0)
    scaled = np.clip((np.where(valid, depth_m, lo) - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    rgb = cv2.applyColorMap(scaled, cv2.COLORMAP_TURBO)[..., ::-1].copy()
    rgb[~valid] = 0
    return rgb


def colourise_ids(ids: np.ndarray) -> np.ndarray:
    """(H,W) instance ids -> (H,W,3) uint8 RGB; 0 (background) is dark grey."""
    rng = np.random.default_rng(7)
    palette = rng.integers(60, 256, (int(ids.max()) + 1, 3)).astype(np.uint8)
    palette[0] = 40
    return palette[ids]


def overlay(colour: np.ndarray, layer: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(H,W,3) colour image with ``layer`` blended in half-and-half where ``where`` is set."""
    out = colour.copy()
    out[where] = (colour[where].astype(np.uint16) + layer[where]) // 2
    return out


def overlay_ids(colour: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Instance ids over the colour image, with each mask's outline in its full colour."""
    rgb = colourise_ids(ids)
    out = overlay(colour, rgb, ids > 0)
    edge = (ids != ndimage.grey_erosion(ids, size=3)) | (ids != ndimage.grey_dilation(ids, size=3))
    out[edge & (ids > 0)] = rgb[edge & (ids > 0)]
    return out


def _palette(n: int) -> np.ndarray:
    return colourise_ids(np.arange(n))


def draw_gaussians(colour: np.ndarray, means: np.ndarray, ids: np.ndarray, K: np.ndarray, T_cw: np.ndarray) -> np.ndarray:
    """Gaussian centres (N,3) projected as dots coloured by object id (background ids grey) over an image,
    nearest drawn last."""
    out = (colour // 2).copy()
    uv, z = project(K, T_cw, means.astype(np.float64))
    order = np.argsort(-z)
    pal = _palette(int(ids.max()) + 1)
    H, W = out.shape[:2]
    for i in order:
        u, v = int(round(uv[i, 0])), int(round(uv[i, 1]))
        if z[i] > 0 and 0 <= u < W and 0 <= v < H:
            out[v, u] = pal[ids[i]]
    return out


def draw_tracks(colour: np.ndarray, means: np.ndarray, ids: np.ndarray, K: np.ndarray, T_cw: np.ndarray,
                every: int = 25) -> np.ndarray:
    """Projected trajectories (T,N,3) of every ``every``-th Gaussian, coloured by object id."""
    out = np.ascontiguousarray(colour // 2)
    pal = _palette(int(ids.max()) + 1)
    for i in range(0, means.shape[1], every):
        if ids[i] == 0:
            continue
        uv, z = project(K, T_cw, means[:, i].astype(np.float64))
        if (z <= 0).any():
            continue
        pts = np.round(uv).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [pts], False, tuple(int(x) for x in pal[ids[i]]), 1, cv2.LINE_AA)
        cv2.circle(out, tuple(int(x) for x in pts[-1, 0]), 1, tuple(int(x) for x in pal[ids[i]]), -1)
    return out


def _source_colour(group: zarr.Group):
    """The colour frames of the capture an artifact was made from, or None when it is not there."""
    source = group.attrs.get("source_capture")
    if not source or not Path(source, "zarr.json").exists():
        return None
    return open_artifact(source, "capture")["color"]


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = np.ascontiguousarray(img)
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _fit(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST) if img.shape[:2] != (h, w) else img


def _depth_range(depth: np.ndarray) -> tuple[float, float]:
    """Colour-map limits (m) from the valid depth of the first frames: 1st to 99th percentile."""
    valid = depth[np.isfinite(depth) & (depth > 0)]
    if valid.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(valid, [1, 99])
    return float(lo), float(max(hi, lo + 1e-3))


def contact_sheet(group: zarr.Group) -> np.ndarray:
    """RGB contact sheet of a capture or ground-truth artifact."""
    schema = group.attrs["schema"]
    if schema == "capture":
        C, T = group["color"].shape[:2]
        h, w = group["color"].shape[2:4]
        panels = [("colour", lambda c, t: group["color"][c, t])]
        if "depth" in group:
            scale = group["depth_scale_m"][:]
            lo, hi = _depth_range(group["depth"][:, 0] * scale[:, None, None])
            panels.append(("depth", lambda c, t: colourise_depth(group["depth"][c, t] * scale[c], lo, hi)))
        if "ir_left" in group:
            panels.append(("ir left", lambda c, t: group["ir_left"][c, t]))
        names = group.attrs["camera_names"]
    elif schema == "groundtruth":
        C, T = group["ids_color"].shape[:2]
        h, w = group["ids_color"].shape[2:4]
        lo, hi = _depth_range(group["depth_color"][:, 0])
        panels = [("ids", lambda c, t: colourise_ids(group["ids_color"][c, t])),
                  ("true depth", lambda c, t: colourise_depth(group["depth_color"][c, t], lo, hi))]
        names = [f"cam{c}" for c in range(C)]
    elif schema == "depth":
        C, T = group["depth"].shape[:2]
        h, w = group["depth"].shape[2:4]
        lo, hi = _depth_range(group["depth"][:, 0])
        panels = [("depth", lambda c, t: colourise_depth(group["depth"][c, t], lo, hi)),
                  ("confidence", lambda c, t: group["confidence"][c, t])]
        colour = _source_colour(group)
        if colour is not None:
            panels.append(("depth over colour", lambda c, t: overlay(
                colour[c, t], colourise_depth(group["depth"][c, t], lo, hi), group["depth"][c, t] > 0)))
        names = group.attrs["camera_names"]
    elif schema == "masks":
        C, T = group["ids"].shape[:2]
        h, w = group["ids"].shape[2:4]
        colour = _source_colour(group)
        if colour is not None:
            panels = [("colour", lambda c, t: colour[c, t]),
                      ("ids over colour", lambda c, t: overlay_ids(colour[c, t], group["ids"][c, t]))]
        else:
            panels = [("ids", lambda c, t: colourise_ids(group["ids"][c, t]))]
        names = group.attrs["camera_names"]
    elif schema == "labels":
        colour = open_artifact(group.attrs["images"], "capture")["color"]
        C, T, h, w = colour.shape[:4]
        tracked, ids = group["tracked_means"][:], group["ids"][:]
        K, T_cw = group["K"][:], group["T_cw"][:]
        panels = [("Gaussians by id", lambda c, t: draw_gaussians(colour[c, t], tracked[t], ids, K[c], T_cw[c])),
                  ("tracks to t", lambda c, t: draw_tracks(colour[c, t], tracked[:t + 1], ids, K[c], T_cw[c]))]
        names = group.attrs["camera_names"]
    else:
        raise ArtifactError(f"no picture is defined for schema {schema!r}")
    if C == 0 or T == 0:
        raise ArtifactError(f"{C} cameras and {T} frames: nothing to draw")
    frames = sorted(set([0, T // 2, T - 1]))
    rows = []
    for c in range(C):
        row = [_label(_fit(fn(c, t), h, w), f"{names[c]} t={t} {name}") for t in frames for name, fn in panels]
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def inspect(path: str, png: str | None = None) -> str:
    group = zarr.open_group(str(path), mode="r") if Path(path, "zarr.json").exists() else None
    if group is None:
        raise ArtifactError(f"{path}: not a zarr v3 group")
    schema = group.attrs.get("schema")
    if schema in SCHEMAS:
        group = open_artifact(path, schema)  # checks version and completeness
    text = "\n".join([f"{path}/"] + tree(group, "    "))
    if png:
        png = Path(png)
        if png.suffix.lower() not in PICTURE_SUFFIXES:
            raise ArtifactError(f"{png}: a picture is written as {', '.join(PICTURE_SUFFIXES)}")
        if png.is_dir():
            raise ArtifactError(f"{png} is a folder; name the picture file")
        try:
            sheet = contact_sheet(group)
        except ArtifactError as e:
            raise ArtifactError(f"{path}: {e}") from None
        png.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the picture, then renamed: a killed run leaves no half-written picture.
        tmp = png.with_name(f"{png.name}.partial-{os.getpid()}{png.suffix}")
        if not cv2.imwrite(str(tmp), sheet[..., ::-1]):
            raise ArtifactError(f"{png}: OpenCV could not write the picture")
        os.replace(tmp, png)
    return text
