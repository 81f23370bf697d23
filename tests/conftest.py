"""Shared fixtures: a small config (tiny images, few frames) and helpers to run stage commands."""
from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config, scene_spec, validate_config

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = ROOT.parent / "shared" / "data" / "external"


def external(name: str) -> Path:
    """A real data set from ../shared/data/external, or skip saying why."""
    path = EXTERNAL / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (it lives beside the project, not in a user's clone)")
    return path


@contextlib.contextmanager
def torch_threads(n: int):
    """torch at ``n`` threads for the duration, then as it was."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_module(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def default_config() -> dict:
    return load_config(ROOT / "config.yaml")


def small(config: dict, width: int = 160, height: int = 120, frames: int = 4) -> dict:
    """The default config at a small resolution and length, still valid against the schema."""
    cfg = copy.deepcopy(config)
    cfg["rig"]["color"]["resolution"] = [width, height]
    cfg["rig"]["depth"]["resolution"] = [width, height]
    cfg["calibration"]["frames"] = 2
    # A pixel at 160x120 spans ~7 mm on the objects: a point at a silhouette rounds onto the background in
    # another view often enough that carving on one camera's word eats the objects' edges.
    cfg["masks"]["carve_votes"] = 2
    # The masks' guided filter and disc smoothing are sized for 424x240 (radius 2 px; 12 neighbours, about
    # 5 mm of a pin there): here a pin is 5 px wide and 12 model points span most of it, and with either
    # the small episode's resting pins were registered worse (labels' rotation 7.1 deg -> 9.7-11.8 deg).
    cfg["masks"]["guided_radius_px"] = 0
    cfg["masks"]["surfel_smooth_neighbours"] = 0
    for scene in cfg["scenes"].values():
        scene["frames"] = frames
    return validate_config(cfg)


@pytest.fixture(scope="session")
def small_config(default_config) -> dict:
    return small(default_config)


@pytest.fixture(scope="session")
def small_config_file(small_config, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(small_config))
    return path


@pytest.fixture(scope="session")
def bowling_episode(small_config, tmp_path_factory):
    """(capture path, ground-truth path) of one small bowling episode, rendered once per session; or, where
    $PIPELINE_TEST_BOWLING_EPISODE names a folder, its capture.zarr and groundtruth.zarr, rendered elsewhere
    from the same config (a lent GPU's image has no pybullet: `bench/gpu.sh prepare` renders one for it)."""
    rendered = os.environ.get("PIPELINE_TEST_BOWLING_EPISODE")
    if rendered:
        cap, gt = Path(rendered) / "capture.zarr", Path(rendered) / "groundtruth.zarr"
        for path in (cap, gt):
            if not path.exists():
                raise FileNotFoundError(f"PIPELINE_TEST_BOWLING_EPISODE: {path} does not exist")
        return cap, gt
    return render_bowling_episode(small_config, tmp_path_factory.mktemp("bowling"))


def render_bowling_episode(config: dict, out: Path) -> tuple[Path, Path]:
    """Render bowling train_0000 of ``config`` into ``out``; returns (capture path, ground-truth path)."""
    from pipeline.capture import write_episode

    cap, gt = out / "capture.zarr", out / "groundtruth.zarr"
    write_episode(scene_spec(config, "bowling"), "train_0000", str(cap), str(gt))
    return cap, gt
