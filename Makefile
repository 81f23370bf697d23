# The two commands a fresh machine needs (see README.md):
#   make run    set up .venv and run the default bowling scene through every stage built so far
#   make test   set up .venv and run the tests
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
TARGET ?= $(foreach stage,capture calibration depth masks tracking ids labels,results/bowling/quality/$(stage).csv)
CORES ?= 2
# sam2's optional CUDA extension (hole filling in its masks): set to 1 on a machine with nvcc and a GPU.
SAM2_BUILD_CUDA ?= 0

.PHONY: setup run test bench clean
setup: $(VENV)/.installed

# pyrealsense2 needs libusb at import time; install it where it is missing (Debian/Ubuntu, as root).
$(VENV)/.installed: pyproject.toml constraints.txt
	@ldconfig -p | grep -q libusb-1.0 || { command -v apt-get >/dev/null && \
		$$(test "$$(id -u)" = 0 || echo sudo) apt-get install -y -q libusb-1.0-0; }
	test -x $(PY) || python3 -m venv $(VENV)
	# Every install is held to constraints.txt: the exact versions the README's figures were measured with.
	$(PY) -m pip install -q -c constraints.txt --upgrade pip setuptools wheel
	# torch first, at the constraints' release: an unpinned torch would pull the newest CUDA build (several GB).
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# sam2 declares torchvision, which has no CPU build here and which its video predictor never imports:
	# install it without dependencies (those it uses are in pyproject.toml) and build it against this torch.
	SAM2_BUILD_CUDA=$(SAM2_BUILD_CUDA) $(PY) -m pip install -q -c constraints.txt --no-deps --no-build-isolation sam2
	touch $@

run: setup
	$(VENV)/bin/snakemake --cores $(CORES) $(TARGET)
	$(PY) -m pipeline inspect results/bowling/capture/train_0000.zarr --png results/bowling/inspect/capture_train_0000.png
	$(PY) -m pipeline inspect results/bowling/labels/train_0000.zarr --png results/bowling/inspect/labels_train_0000.png

test: setup
	$(PY) -m pytest -q

# bench/stages.py times the stages after capture on the artifacts `make run` left in results/.
bench: setup
	$(PY) bench/capture.py
	$(PY) bench/stages.py
	$(PY) bench/renderer.py

clean:
	rm -rf results .snakemake
