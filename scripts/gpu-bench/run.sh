#!/usr/bin/env bash
# One command for the GPU benchmark: install clipserve into its own venv, then run gpu_bench.py.
#
# Offline: if ./wheels/ (beside this script) holds wheels, everything is installed from there
# with --no-index (make that folder with prepare-wheels.sh on a machine with network). Otherwise
# clipserve is installed from this checkout, dependencies from PyPI. Idempotent: the venv under
# ~/.cache/clipserve/gpu-bench/ is reused. GPU_BENCH_PYTHON=/path/to/python skips the install and
# uses that interpreter (where clipserve is already installed).
#   bash scripts/gpu-bench/run.sh                 # ViT-B-32 and ViT-L-14, results in ./gpu-bench-results
#   bash scripts/gpu-bench/run.sh --dry-run       # tiny CPU run of the same code path
#   bash scripts/gpu-bench/run.sh --models ViT-B-32 --peak-tflops 312   # e.g. an A100
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}/gpu-bench/venv"

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi

if [[ -n "${GPU_BENCH_PYTHON:-}" ]]; then
  python="$GPU_BENCH_PYTHON"
else
  [[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
  if compgen -G "$here/wheels/*.whl" >/dev/null; then
    echo "gpu-bench: installing from $here/wheels (offline)" >&2
    "$venv/bin/pip" install -q --no-index --find-links "$here/wheels" "clipserve[bench]"
  else
    echo "gpu-bench: no wheels beside the script; installing from $repo and PyPI" >&2
    "$venv/bin/pip" install -q "$repo[bench]"
  fi
  python="$venv/bin/python"
fi

"$python" - <<'PY'
import torch
print(f"gpu-bench: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
PY

if (( dry_run )); then
  # The CPU path of the same script, sized to finish in a few minutes on two cores.
  exec "$python" "$here/gpu_bench.py" --models ViT-B-32 --requests 8 --single-concurrency 1,4 \
    --batch-items 4 --batch-concurrency 2 --batch-sizes 1,4 --ceiling-min-s 0.2 "$@"
fi
exec "$python" "$here/gpu_bench.py" "$@"
