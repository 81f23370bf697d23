"""The Snakemake workflow: lint-clean, a DAG covering every episode, ground truth read only by quality rules."""
import copy
import re
import subprocess
import sys

import numpy as np
import yaml
from snakemake.utils import update_config

from pipeline.depth import matcher_params

from .conftest import ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(*args, timeout=180):
    return subprocess.run([*SNAKEMAKE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_lint_is_clean():
    result = _snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def _job_counts(output: str) -> dict[str, int]:
    counts = {}
    for line in output.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_default_dry_run_captures_every_episode_and_the_calibration(default_config, tmp_path):
    result = _snakemake("-n", "--forceall", "--directory", str(ROOT), "results/bowling/quality/capture.csv")
    assert result.returncode == 0, result.stderr
    n_episodes = sum(default_config["scenes"]["bowling"]["episodes"].values())
    assert _job_counts(result.stdout)["capture"] == n_episodes + 1


def test_full_profile_is_the_paper_scale():
    result = _snakemake("--profile", "workflow/profiles/full", "-n", "--forceall",
                        "results/full/bowling/quality/capture.csv", timeout=300)
    assert result.returncode == 0, result.stderr
    assert _job_counts(result.stdout)["capture"] == 300 + 1


def test_the_readme_rerun_of_one_stage_reruns_one_job():
    """README's cluster example reruns one episode's capture, not the workflow (without the SLURM plugin)."""
    line = next(x for x in (ROOT / "README.md").read_text().splitlines() if "--forcerun" in x and x.startswith("snakemake"))
    args = line.split()[1:]
    profile = args.index("--profile")
    del args[profile:profile + 2]
    result = _snakemake("-n", *args)
    assert result.returncode == 0, result.stderr
    assert _job_counts(result.stdout) == {"capture": 1, "total": 1}, result.stdout


def test_bad_config_override_stops_the_workflow():
    result = _snakemake("-n", "--config", "rig={'colour_gain': 2}")
    assert result.returncode != 0
    assert "colour_gain" in result.stdout + result.stderr


def test_sam2_weights_are_an_input_of_the_masks():
    """New weights at the same path must rerun the masks: the checkpoint is the rule's input (here missing)."""
    result = _snakemake("-n", "--forceall", "results/bowling/masks/train_0000.zarr", "--config",
                        "masks={'backend': 'sam2', 'sam2': {'checkpoint': 'checkpoints/not_here.pt'}}")
    assert result.returncode != 0
    assert "checkpoints/not_here.pt" in result.stdout + result.stderr


def test_only_quality_and_evaluation_rules_read_ground_truth():
    """Stages never see ground truth: any rule whose input names it must be a quality or evaluation rule."""
    readers = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", smk.read_text(), re.M):
            inputs = body.split("output:")[0] if "input:" in body else ""
            if "groundtruth" in inputs:
                readers.add(name)
                assert name.startswith(("quality", "evaluat")), f"{smk.name}: rule {name} reads ground truth"
    assert "quality_capture" in readers


def _matcher_reach_m(config: dict) -> float:
    """Nearest depth (metres) the stereo matcher's disparity range reaches at the rig's infrared resolution."""
    rig = config["rig"]["depth"]
    focal_px = rig["resolution"][0] / 2 / np.tan(np.radians(rig["hfov_deg"]) / 2)
    return matcher_params(config["depth"]).nearest_depth_m(focal_px, rig["baseline_m"])


def test_full_profile_matcher_reaches_as_near_as_the_default(default_config):
    """A wider image means larger disparities: the paper-scale profile must widen the search to match,
    or near objects fall out of range and take the table's depth."""
    full = copy.deepcopy(default_config)
    update_config(full, yaml.safe_load((ROOT / "workflow/profiles/full/scale.yaml").read_text()))
    assert _matcher_reach_m(full) <= _matcher_reach_m(default_config)
