"""The machine a benchmark ran on, with a speed index so that figures from different days compare.

The machines this project is benchmarked on differ by up to 4x from session to session with the same
code (the renderer benchmark took 27 ms on one day and 112 ms on another). Every benchmark JSON carries
``machine()``: the CPU count, platform, Python and ``speed_index_ms``, the reference renderer's forward
and backward time of ``bench/renderer.py`` (5,000 Gaussians of gsplat's garden harness at 160x120,
median of 7), measured just before the benchmark. Divide a figure by its speed index to compare it with
another day's.
"""
from __future__ import annotations

import os
import platform

from bench.renderer import EXTERNAL, time_reference


def machine(speed_index_ms: float | None = None) -> dict:
    """The machine's facts and speed index; ``speed_index_ms`` where the caller has just measured it."""
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    if speed_index_ms is not None:
        return {**info, "speed_index_ms": speed_index_ms}
    harness = EXTERNAL / "gsplat" / "test_garden.npz"
    if not harness.exists():
        return {**info, "speed_index_ms": None, "speed_index_missing": f"{harness} is absent"}
    return {**info, "speed_index_ms": time_reference(7)["reference_fwd_bwd_ms"]}
