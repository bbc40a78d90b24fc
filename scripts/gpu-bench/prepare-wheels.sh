#!/usr/bin/env bash
# On a machine with network: put every wheel run.sh needs into ./wheels, for a GPU machine without
# network (copy the whole scripts/gpu-bench folder there). The target's Python version and
# platform default to this machine's Python and manylinux x86_64; override with
# PY_VERSION=311 and PLATFORM=manylinux_2_28_x86_64. PyPI's Linux torch wheels carry CUDA.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
py_version="${PY_VERSION:-$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')}"
platform="${PLATFORM:-manylinux_2_28_x86_64}"

mkdir -p "$here/wheels"
"$python" -m pip wheel -q --no-deps --wheel-dir "$here/wheels" "$repo/service"
wheel="$(ls -t "$here"/wheels/clipserve-*.whl | head -1)"
"$python" -m pip download -q --dest "$here/wheels" --only-binary=:all: \
  --python-version "$py_version" --platform "$platform" --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 "$wheel[bench]"
echo "gpu-bench: $(ls "$here/wheels" | wc -l) wheels in $here/wheels"
