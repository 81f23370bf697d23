"""The artifact contract: one zarr v3 group per stage and per scene or episode.

Every artifact's root attributes hold:
    schema, schema_version   what the layout is; readers check both
    stage                    which pipeline stage wrote it
    scene, episode, split    what it is about
    config, config_hash      the config values that shaped it and their sha256
    code_version             git commit of the pipeline (``-dirty`` when the tree had changes)
    units, frame_conventions  unit and frame conventions (see ``UNITS``, ``FRAME_CONVENTIONS``)
    complete                 set last, just before the atomic rename

Writers build the group under ``<path>.partial-<pid>`` and rename it into place only when complete, so
a killed job leaves nothing at ``<path>``; readers refuse anything without ``complete``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import zarr

from .config import config_hash

UNITS = {"length": "m", "time": "s", "angle": "rad", "mass": "kg"}
FRAME_CONVENTIONS = {
    "world": "right-handed, metres, z up, table plane at z = 0",
    "camera": "OpenCV: x right, y down, z forward; extrinsics are 4x4 world-to-camera (x_cam = T_cw x_world)",
    "pixel": "pixel centres at integer coordinates, (u, v) = (column, row)",
    "quaternion": "(x, y, z, w)",
}

# Snakemake leaves a timestamp file inside directory outputs; it is not part of the zarr hierarchy.
warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp is not recognized")

# Schemas this code writes and reads, and their current versions.
SCHEMAS = {"capture": 1, "groundtruth": 1, "calibration": 1, "depth": 1, "masks": 1, "tracking": 1, "ids": 1, "labels": 1}


class ArtifactError(RuntimeError):
    """An artifact that is missing, incomplete, or of another schema or version."""


@lru_cache(maxsize=1)
def code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "particle-dynamics-pipeline " + version("particle-dynamics-pipeline")
        except PackageNotFoundError:
            return "unknown"


class ArtifactWriter:
    """Context manager that writes a zarr group atomically.

    >>> with ArtifactWriter(path, "capture", stage="capture", config=spec, scene="bowling") as g:
    ...     g.create_array("color", shape=(4, 10, 240, 424, 3), dtype="uint8", chunks=(1, 1, 240, 424, 3))
    """

    def __init__(self, path, schema: str, stage: str, config: dict, **attrs):
        if schema not in SCHEMAS:
            raise ValueError(f"unknown artifact schema {schema!r}")
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.partial-{os.getpid()}")
        self.attrs = {
            "schema": schema,
            "schema_version": SCHEMAS[schema],
            "stage": stage,
            **attrs,
            "config": config,
            "config_hash": config_hash(config),
            "code_version": code_version(),
            "units": UNITS,
            "frame_conventions": FRAME_CONVENTIONS,
            "complete": False,
        }

    def __enter__(self) -> zarr.Group:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self.group.attrs.update(self.attrs)
        return self.group

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        self.group.attrs["complete"] = True
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return False


def open_artifact(path, schema: str) -> zarr.Group:
    """Open a finished artifact for reading, checking its schema and version."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise ArtifactError(f"{path}: no artifact here (expected a zarr v3 group written by the pipeline)")
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if attrs.get("schema") != schema:
        raise ArtifactError(f"{path}: expected a '{schema}' artifact, found schema {attrs.get('schema')!r}")
    if attrs.get("schema_version") != SCHEMAS[schema]:
        raise ArtifactError(f"{path}: '{schema}' schema version {attrs.get('schema_version')!r} is not "
                            f"readable by this code (reads version {SCHEMAS[schema]}); rerun the stage")
    if attrs.get("complete") is not True:
        raise ArtifactError(f"{path}: artifact is incomplete (its writer did not finish); rerun the stage")
    return group


def same_cameras(error: type[Exception], reference: tuple, *others: tuple) -> list[str]:
    """The camera names of ``reference``, a (path, artifact) pair; raises ``error`` naming both paths where
    one of ``others`` (pairs too) has other cameras, or the same ones in another order."""
    reference_path, reference_art = reference
    names = list(reference_art.attrs["camera_names"])
    for path, art in others:
        if list(art.attrs["camera_names"]) != names:
            raise error(f"{path} has cameras {list(art.attrs['camera_names'])}, {reference_path} has {names}")
    return names


def frame_array(group: zarr.Group, name: str, shape: tuple, dtype) -> zarr.Array:
    """An image-stack array (C, T, H, W[, 3]) chunked one image per chunk, so frames are written as they come."""
    return group.create_array(name, shape=shape, dtype=dtype, chunks=(1, 1, *shape[2:]))


def put(group: zarr.Group, name: str, data: np.ndarray, attrs: dict | None = None, chunks=None):
    """Write a whole array into a group (small arrays, metadata)."""
    data = np.asarray(data)
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks or data.shape or (1,))
    arr[...] = data
    if attrs:
        arr.attrs.update(attrs)
    return arr
