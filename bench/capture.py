"""Benchmark of the synthetic capture: time and peak memory.

    python bench/capture.py [--repeats 3] [--full-repeats 1] [--out bench/capture.json]

default   every capture job of the default bowling scene (its episodes and the calibration sequence),
          run by Snakemake with --cores 2 into a scratch results folder, as `make run` does. Wall time
          of the whole set; peak memory of the largest job (max RSS).
full      one episode of the `full` profile (640x480, 120 frames), `python -m pipeline.capture` alone.

Figures are medians over the repeats; every run's figures are kept in the JSON too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from snakemake.utils import update_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from pipeline.config import episode_names, scene_spec, validate_config  # noqa: E402

# Run a command and report its wall time and the largest max-RSS of it and its descendants.
MEASURE = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t0
rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mib": rss_kib / 1024}))
"""


def measure(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"benchmark command failed ({result['rc']}): {' '.join(cmd)}")
    return result


def summarise(runs: list[dict]) -> dict:
    return {"wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in runs), "runs": runs}


def bench_default(repeats: int) -> dict:
    config = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    episodes = sum(config["scenes"]["bowling"]["episodes"].values())
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-capture-") as scratch:
            targets = [f"{scratch}/bowling/capture/{e}.zarr" for e in episode_names(config["scenes"]["bowling"])]
            # Targets first: --quiet and --config take every word that follows them.
            runs.append(measure([sys.executable, "-m", "snakemake", *targets, f"{scratch}/bowling/capture/calibration.zarr",
                                 "--cores", "2", "--quiet", "all", "--config", f"results={scratch}"]))
    frames = config["scenes"]["bowling"]["frames"]
    return {"what": f"all {episodes} default bowling episodes ({frames} frames) and the calibration sequence, "
                    "snakemake --cores 2",
            "resolution": config["rig"]["color"]["resolution"], "episodes": episodes, "frames": frames,
            **summarise(runs)}


def bench_full(repeats: int) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(config, yaml.safe_load((ROOT / "workflow/profiles/full/scale.yaml").read_text()))
    validate_config(config)
    spec = json.dumps(scene_spec(config, "bowling"))
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-capture-full-") as scratch:
            runs.append(measure([sys.executable, "-m", "pipeline.capture", "--spec", spec, "--episode", "train_0000",
                                 "--capture", f"{scratch}/c.zarr", "--groundtruth", f"{scratch}/g.zarr"]))
    return {"what": "one bowling episode of the full profile, python -m pipeline.capture",
            "resolution": config["rig"]["color"]["resolution"], "frames": config["scenes"]["bowling"]["frames"],
            "episodes_in_profile": sum(config["scenes"]["bowling"]["episodes"].values()), **summarise(runs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs of the default scene")
    ap.add_argument("--full-repeats", type=int, default=1, help="runs of a full-profile episode (about 5 min each)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "capture.json"))
    args = ap.parse_args()
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "default": bench_default(args.repeats)}
    print(json.dumps(report["default"], indent=1), file=sys.stderr)
    if args.full_repeats > 0:
        report["full"] = bench_full(args.full_repeats)
        report["full"]["projected_profile_hours_one_job_at_a_time"] = (report["full"]["wall_s_median"]
                                                         * report["full"]["episodes_in_profile"] / 3600)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: {m: v for m, v in r.items() if m != "runs"} for k, r in report.items() if k in ("default", "full")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
