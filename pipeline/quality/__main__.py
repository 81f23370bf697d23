"""python -m pipeline.quality STAGE ...: write a stage's quality report (see each stage's --help)."""
import sys

from . import calibration, capture, depth, ids, labels, masks, tracking

STAGES = {"capture": capture.main, "calibration": calibration.main, "depth": depth.main, "masks": masks.main,
          "tracking": tracking.main, "ids": ids.main, "labels": labels.main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        print(f"usage: python -m pipeline.quality {{{','.join(STAGES)}}} ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(STAGES[sys.argv[1]](sys.argv[2:]))
