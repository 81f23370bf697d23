"""Benchmark of the stages after capture on the default scene: time and peak memory per stage.

    python bench/stages.py [--repeats 3] [--results results] [--out bench/stages.json]

Runs each stage's command by hand on artifacts the default run made (``make run`` first):
calibration (one per rig), depth and masks (one episode, ``train_0000``), each ``--repeats`` times into
a scratch folder. Figures are medians; every run's figures are kept too.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.capture import measure, summarise  # noqa: E402
from bench.machine import machine  # noqa: E402
from pipeline.config import scene_spec, validate_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default="results", help="results folder of a finished default run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "stages.json"))
    args = ap.parse_args()
    config = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    scene = Path(args.results) / "bowling"
    needed = [scene / "capture" / "calibration.zarr", scene / "capture" / "train_0000.zarr",
              scene / "calibration.zarr", scene / "depth" / "train_0000.zarr"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"run the default pipeline first (make run); missing: {', '.join(missing)}")

    def spec(*sections):
        return json.dumps(scene_spec(config, "bowling", sections))

    py = sys.executable
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "scene": "bowling", "episode": "train_0000",
              "frames": config["scenes"]["bowling"]["frames"], "resolution": config["rig"]["color"]["resolution"]}
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as scratch:
        commands = {
            "calibration": [py, "-m", "pipeline.calibration", "--capture", str(needed[0]), "--spec",
                            spec("calibration"), "--out", f"{scratch}/calibration.zarr"],
            "depth": [py, "-m", "pipeline.depth", "--capture", str(needed[1]), "--spec", spec("depth"),
                      "--out", f"{scratch}/depth.zarr"],
            "masks": [py, "-m", "pipeline.masks", "--capture", str(needed[1]), "--depth", str(needed[3]), "--calibration", str(needed[2]),
                      "--spec", spec("masks"), "--out", f"{scratch}/masks.zarr"],
        }
        for stage, cmd in commands.items():
            report[stage] = summarise([measure(cmd) for _ in range(args.repeats)])
            print(f"{stage}: {report[stage]['wall_s_median']:.1f} s, {report[stage]['peak_rss_mib_median']:.0f} MiB",
                  file=sys.stderr)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
