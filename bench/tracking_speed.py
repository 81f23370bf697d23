"""Seconds per tracked frame on any device: the tracking stage's per-frame optimisation at scale.

    python bench/tracking_speed.py [--device auto] [--backend auto] [--gaussians 100000]
        [--size 640 480] [--frames 5] [--first-frame-iterations 150] [--out bench/tracking_speed.json]

The issue's GPU target is a frame of tracking at 4 x 640x480 with about 10^5 Gaussians in at most 2 s
(Dynamic 3D Gaussians: about 40 s). No capture is needed, so a lent GPU spends its minutes on the timing:
``--gaussians`` Gaussians are spread over the surfaces of 11 balls (2-3 cm radius, the size of the bowling
scene's pins and ball) on the table, seen by config.yaml's four rig cameras at ``--size``. They are first
fitted to their own render (``first_frame_s``: ``--first-frame-iterations`` steps of the stage's
first-frame fit, pruning and densification included). Then each frame moves every ball rigidly by a few
millimetres and degrees, renders that as the frame's target colour and masks, and times
``pipeline.tracking.track_frame``: ``tracking.track.iterations`` steps of the image, segmentation, rigidity
and floor losses with Adam, as the stage runs them, from the last frame's state moved by each ball's motion
(the stage's per-object ICP of masked depth, which runs on the CPU and is left out here, gives that motion
up to its error). Medians over ``--frames`` frames after one warm-up frame (gsplat builds its kernels on
first use). ``mean_error_mm`` is how far the tracked Gaussians end from the moved ones: the photometric
steps must not walk them off.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.spatial.transform import Rotation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import validate_config  # noqa: E402
from pipeline.realsense import build_rig  # noqa: E402
from pipeline.tracking import (Frame, Gaussians, Views, apply_motion, fit_first_frame, neighbours,  # noqa: E402
                               track_frame, tracking_device)


def balls(n: int, rng: np.random.Generator):
    """(n,3) points on the surfaces of 11 balls on the table, their (n,3) colours in [0, 1], (n,) ids 1..11
    and (n,) spacings (metres); and the (11,3) ball centres."""
    radii = rng.uniform(0.02, 0.03, 11)
    centres = np.stack([rng.uniform(-0.25, 0.15, 11), rng.uniform(-0.12, 0.12, 11), radii], 1)
    area = 4 * np.pi * radii ** 2
    ids = rng.choice(11, size=n, p=area / area.sum())
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    points = centres[ids] + radii[ids, None] * normals
    colours = np.clip(rng.uniform(0.2, 0.9, (11, 3))[ids] + rng.normal(0, 0.08, (n, 3)), 0, 1)  # a noise texture
    spacing = np.sqrt(area.sum() / n)
    return points, colours, ids + 1, np.full(n, spacing), centres


def rig_cameras(config: dict, width: int, height: int):
    """(C,3,3) K and (C,4,4) T_cw of config.yaml's rig colour cameras at width x height."""
    rig = build_rig({**config["rig"], "color": {**config["rig"]["color"], "resolution": [width, height]}})
    return np.stack([unit.color.K for unit in rig]), np.stack([unit.color.T_cw for unit in rig])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "gsplat"])
    ap.add_argument("--gaussians", type=int, default=100_000)
    ap.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("WIDTH", "HEIGHT"))
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--first-frame-iterations", type=int, default=150)
    ap.add_argument("--out", default=str(ROOT / "bench" / "tracking_speed.json"))
    args = ap.parse_args()
    config = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    cfg = config["tracking"]
    device = tracking_device(args.device)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    points, colours, ids, spacing, centres = balls(args.gaussians, rng)
    K, T_cw = rig_cameras(config, *args.size)
    views = Views(K, T_cw, np.full((len(K), args.size[1], args.size[0], 3), 128, np.uint8),
                  args.backend, device)
    g = Gaussians(points, colours, ids, spacing / 2, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def target(means, quats) -> Frame:  # what the cameras see: colour and masks of the Gaussians there
        with torch.no_grad():
            rgb, seg, out = views.render(g, means, quats, 11)
        ids = torch.where(out.alpha > 0.5, seg.argmax(-1) + 1, 0)
        return Frame((rgb.clamp(0, 1) * 255).round().byte().cpu().numpy(), ids.cpu().numpy(), 11, device)

    first = target(g.means, g.quats)
    sync()
    start = time.perf_counter()
    fit_first_frame(g, views, first, 11, {**cfg, "first_frame": {**cfg["first_frame"],
                                                                 "iterations": args.first_frame_iterations}})
    sync()
    first_frame_s = time.perf_counter() - start
    print(f"first frame: {first_frame_s:.2f} s, {len(g.means)} Gaussians", file=sys.stderr)
    means, quats = g.means.detach().clone(), g.quats.detach().clone()
    nbr, w = (x.to(device) for x in neighbours(means.cpu().numpy(), g.labels.cpu().numpy(), cfg["neighbours"],
                                               cfg["neighbour_weight"]))
    offsets0 = (means[nbr] - means[:, None]).norm(dim=-1)
    truth_m, truth_q = means.clone(), quats.clone()
    runs, errors = [], []
    for frame in range(args.frames + 1):
        motion = {}
        for k, c in enumerate(centres, start=1):  # about the centre: 1.2 deg s.d. per axis, up to 3 mm per axis
            R = Rotation.from_rotvec(rng.normal(size=3) * np.radians(1.2)).as_matrix()
            step = rng.uniform(-0.003, 0.003, 3)
            motion[k] = np.eye(4)
            motion[k][:3, :3], motion[k][:3, 3] = R, c + step - R @ c
            centres[k - 1] = c + step
        truth_m, truth_q = apply_motion(truth_m, truth_q, g.labels, motion)
        frame_target = target(truth_m, truth_q)
        # The stage starts a frame from each object's ICP motion; here that motion is exact.
        start_m, start_q = apply_motion(means, quats, g.labels, motion)
        sync()
        start = time.perf_counter()
        new_m, new_q, _ = track_frame(g, views, frame_target, 11, start_m, start_q, means, quats, offsets0, nbr, w,
                                      cfg)
        sync()
        if frame:  # the first frame warms up (and builds gsplat's kernels)
            runs.append(time.perf_counter() - start)
            errors.append(float((new_m - truth_m).norm(dim=-1).mean()) * 1000)
        means, quats = new_m, new_q
        print(f"frame {frame}: {time.perf_counter() - start:.2f} s", file=sys.stderr)
    from bench.machine import machine  # times the CPU reference renderer: the speed index of this machine's CPU

    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "device": device.type, "renderer": views.backend,
              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "threads": torch.get_num_threads(), "gaussians": args.gaussians, "cameras": len(K),
              "size": args.size, "first_frame_iterations": args.first_frame_iterations,
              "first_frame_s": first_frame_s, "gaussians_after_first_frame": len(g.means),
              "iterations": cfg["track"]["iterations"],
              "s_per_frame": statistics.median(runs), "runs_s": runs, "mean_error_mm": errors}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['s_per_frame']:.2f} s a frame ({device.type}, {views.backend}, {len(g.means)} Gaussians, "
          f"{len(K)} x {args.size[0]}x{args.size[1]})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
