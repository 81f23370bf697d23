"""Quality reports: each stage's artifact measured against ground truth (or pseudo-labels, or a reference).

Every report is a long-format CSV, one row per figure, with the columns ``COLUMNS``;
evaluation gathers them into metrics.csv.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

COLUMNS = ["scene", "split", "episode", "stage", "method", "metric", "value", "unit", "against"]


def write_report(rows: list[dict], path: str | Path) -> None:
    """Write rows atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in COLUMNS})
    os.replace(tmp, path)
