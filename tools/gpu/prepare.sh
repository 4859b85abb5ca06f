#!/bin/bash
# Run HERE (the developer machine), from the repo root, before a GPU session's first `device run`.
# Fills .devcarry/ (ignored by git) with what the device machine lacks: its image has Python 3.12,
# torch 2.11 + CUDA 13.0, accelerate, safetensors, rich, typer, imageio, matplotlib, scipy, pytest,
# but no taichi, trimesh, diffusers or PyAV.  The whole tree that travels must stay under 64 MiB,
# so taichi's wheel loses its C-API library (unused from Python) and PyAV stays behind (the demo's
# frames travel decoded instead).
#
# Optional: the official 3DGS rasterizer's source, which cannot be pip-installed.  With the
# session's `fetch` tool bring github:graphdeco-inria/diff-gaussian-rasterization and github:g-truc/glm,
# then:  tools/gpu/prepare.sh /work/.mirror/graphdeco-inria+diff-gaussian-rasterization/repo /work/.mirror/g-truc+glm/repo
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
PY=${PYTHON:-.venv/bin/python}
mkdir -p .devcarry/whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .devcarry/whl taichi==1.7.4 dill trimesh diffusers importlib_metadata
"$PY" - <<'PYEOF'
import glob, os, zipfile
src = glob.glob(".devcarry/whl/taichi-*.whl")[0]
with zipfile.ZipFile(src) as z, zipfile.ZipFile(".devcarry/whl/taichi-slim.zip", "w", zipfile.ZIP_DEFLATED) as o:
    for i in z.infolist():
        if not (i.filename.startswith("taichi/_lib/c_api/") or ".data/" in i.filename):
            o.writestr(i, z.read(i.filename))
os.remove(src)
import numpy as np
from dreamcloth.cli.pipeline.video_io import read_video
v = read_video("cli/data/demo_drape.mp4")
np.savez_compressed(".devcarry/demo_frames.npz", frames=v.frames, fps=v.fps)
PYEOF
if [ $# -ge 2 ]; then
  rm -rf .devcarry/dgr && mkdir -p .devcarry/dgr/third_party/glm
  git -C "$1" archive HEAD | tar -x -C .devcarry/dgr
  git -C "$2" archive HEAD glm | tar -x -C .devcarry/dgr/third_party/glm
fi
du -sh .devcarry
