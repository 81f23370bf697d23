"""python -m pipeline inspect PATH [--png FILE]: print an artifact's tree; optionally draw it."""
import argparse
import sys

from .artifact import ArtifactError
from .inspect import inspect


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="print an artifact's tree (shapes, dtypes, attributes, value ranges)")
    p.add_argument("path")
    p.add_argument("--png", help="also write a picture of the artifact (a contact sheet for captures)")
    args = ap.parse_args(argv)
    try:
        print(inspect(args.path, args.png))
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
