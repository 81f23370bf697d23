"""Benchmark of the renderer and the Gaussian stages; real-data figures of the renderer.

    python bench/renderer.py [--repeats 7] [--results results] [--out bench/renderer.json]

- ``reference_fwd_bwd_ms``: the PyTorch reference renderer, forward and backward, 5,000 Gaussians of
  gsplat's garden harness (its COLMAP points and colours; scales uniform in [0, 0.02), random rotations,
  opacities uniform in [0, 1), as gsplat's tests draw them) into one 160x120 camera; medians of
  ``--repeats`` runs after one warm-up.
- ``gs_dynamics_demo``: its 8,957 trained Gaussians rendered into the four real 640x480 views: alpha
  (> 0.5) IoU with the real masks and PSNR inside the masks, with the splat posed by ICP onto the
  demo's fused point cloud and after a silhouette registration (6 DoF) to the masks; and id voting on
  the real masks: the share of Gaussians voted onto the object whose centre projects inside the mask in
  every view that sees it.
- ``tracking_s_per_frame``: from the Snakemake benchmark files of the default run's tracking jobs
  (``results/bowling/benchmarks/tracking/*.tsv``), wall time over the tracked frames, median over episodes.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.external import gs_dynamics_demo, move_gaussians, register_to_masks  # noqa: E402
from pipeline.geometry import project  # noqa: E402
from pipeline.ids import vote  # noqa: E402
from pipeline.splat import contributions, render  # noqa: E402

EXTERNAL = ROOT.parent / "shared" / "data" / "external"


def garden_inputs(data, n: int, width: int, height: int, device="cpu", seed: int = 0):
    """means, quats, scales, opacities, colours, K (1,3,3), T_cw (1,4,4) from gsplat's garden harness."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data["means3d"]), generator=g)[:n]
    means = torch.from_numpy(data["means3d"])[idx].float()
    colours = torch.from_numpy(data["colors"])[idx].float() / 255
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.02
    opacities = torch.rand(n, generator=g)
    K = torch.from_numpy(data["Ks"][:1]).float().clone()
    K[:, :2] *= width / int(data["width"])
    T_cw = torch.from_numpy(data["viewmats"][:1]).float()
    return [x.to(device) for x in (means, quats, scales, opacities, colours, K, T_cw)]


def time_reference(repeats: int) -> dict:
    data = np.load(EXTERNAL / "gsplat" / "test_garden.npz")
    inputs = garden_inputs(data, 5000, 160, 120)
    times = []
    for i in range(repeats + 1):
        leaves = [x.clone().requires_grad_(True) for x in inputs[:5]]
        start = time.perf_counter()
        out = render(*leaves, *inputs[5:], 160, 120, backend="torch")
        (out.features.sum() + out.depth.sum() + out.alpha.sum()).backward()
        if i:
            times.append((time.perf_counter() - start) * 1000)
    return {"reference_fwd_bwd_ms": statistics.median(times), "runs_ms": times, "gaussians": 5000,
            "resolution": [160, 120], "threads": torch.get_num_threads()}


def demo_figures(d: dict, g: dict) -> dict:
    t = lambda x: torch.from_numpy(np.asarray(x)).float()  # noqa: E731
    C, H, W = d["masks"].shape
    out = render(t(g["means"]), t(g["quats"]), t(g["scales"]), t(g["opacities"]), t(g["colours"]), t(d["K"]),
                 t(d["T_cw"]), W, H, backend="torch")
    alpha, masks = out.alpha.numpy(), d["masks"]
    iou = [float((alpha[c] > 0.5)[masks[c]].sum() / ((alpha[c] > 0.5) | masks[c]).sum()) for c in range(C)]
    images = d["images"].astype(np.float32) / 255
    psnr = [float(-10 * np.log10(((out.features[c].numpy() - images[c])[masks[c]] ** 2).mean())) for c in range(C)]
    gamma = contributions(t(g["means"]), t(g["quats"]), t(g["scales"]), t(g["opacities"]), t(d["K"]), t(d["T_cw"]),
                          torch.from_numpy(masks.astype(np.int64)), 2)[:, :, 1:].numpy()
    ids, _, _ = vote(gamma, 0.05)
    inside = np.ones(len(ids), bool)
    for c in range(C):
        uv, z = project(d["K"][c], d["T_cw"][c], g["means"].astype(np.float64))
        u, v = np.round(uv).astype(int).T
        seen = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        inside[seen] &= masks[c][v[seen], u[seen]]
    voted = ids == 1
    return {"alpha_iou": iou, "alpha_iou_mean": float(np.mean(iou)), "masked_psnr_db": psnr,
            "voted_object": int(voted.sum()), "voted_inside_masks_share": float(inside[voted].mean())}


def tracking_per_frame(results: Path) -> dict:
    """Seconds per tracked frame of each bowling episode in ``results``: its Snakemake benchmark's wall time
    over the frames its tracking artifact tracked (all but the first)."""
    import zarr

    rows, frames = [], {}
    for path in sorted((results / "bowling" / "benchmarks" / "tracking").glob("*.tsv")):
        artifact = results / "bowling" / "tracking" / f"{path.stem}.zarr"
        if not artifact.exists():
            continue
        with open(path) as f:
            rows.append((path.stem, float(next(csv.DictReader(f, delimiter="\t"))["s"])))
        frames[path.stem] = zarr.open_group(str(artifact), mode="r")["means"].shape[0]
    if not rows:
        return {}
    per_frame = [s / (frames[episode] - 1) for episode, s in rows]
    return {"tracking_s_per_frame": statistics.median(per_frame), "episodes": dict(rows), "frames": frames,
            "note": "whole stage wall time (first-frame fit included) over the tracked frames"}


def main() -> int:
    from bench.machine import machine  # bench.machine times this module's reference renderer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--results", default="results")
    ap.add_argument("--out", default=str(ROOT / "bench" / "renderer.json"))
    args = ap.parse_args()
    report = {"date": time.strftime("%Y-%m-%d"), "reference": time_reference(args.repeats)}
    report["machine"] = machine(report["reference"]["reference_fwd_bwd_ms"])
    print(f"reference renderer: {report['reference']['reference_fwd_bwd_ms']:.1f} ms", file=sys.stderr)
    d = gs_dynamics_demo(EXTERNAL / "gs-dynamics-demo")
    report["gs_dynamics_demo"] = {"icp_pose": demo_figures(d, d["gaussians"])}
    T = register_to_masks(d["gaussians"], d["K"], d["T_cw"], d["masks"], scale=0.25, steps=150)
    report["gs_dynamics_demo"]["silhouette_registered"] = {**demo_figures(d, move_gaussians(d["gaussians"], T)),
                                                           "correction_mm": (T[:3, 3] * 1000).tolist()}
    print(json.dumps(report["gs_dynamics_demo"], indent=1), file=sys.stderr)
    report["tracking"] = tracking_per_frame(Path(args.results))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
