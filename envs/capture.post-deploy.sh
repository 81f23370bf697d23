#!/usr/bin/env bash
# Snakemake runs this once in the environment it made from capture.yaml (`--use-conda`), from the workflow's
# directory: the checkout, where constraints.txt and pyproject.toml are.
set -euo pipefail
# The versions the README's figures were measured with, as `make setup` installs them.
python -m pip install -q -c constraints.txt -e .
# sam2 declares torchvision, which its video predictor never imports (see the Makefile).
SAM2_BUILD_CUDA="${SAM2_BUILD_CUDA:-0}" python -m pip install -q -c constraints.txt --no-deps --no-build-isolation sam2
