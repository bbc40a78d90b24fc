#!/usr/bin/env bash
# make test: every phase in order, each one's duration printed as it ends, so a slow run says
# where its time went (CI stops at 90 minutes). pytest runs last and its closing line stays
# the run's last line; it states its own duration.
set -euo pipefail
cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}
summary=()

phase() {
  local name=$1 start=$SECONDS
  shift
  echo "==> $name"
  "$@" || { echo "==> $name FAILED after $((SECONDS - start)) s"; exit 1; }
  summary+=("$name $((SECONDS - start)) s")
  echo "==> $name took $((SECONDS - start)) s"
}

phase install "$MAKE" --no-print-directory dev
phase tools "$MAKE" --no-print-directory tools
phase images "$MAKE" --no-print-directory images
phase lint "$MAKE" --no-print-directory lint
echo "==> before pytest: ${summary[*]/%/;} pytest starts at $((SECONDS / 60)) min"
exec "${PY:-.venv/bin/python}" -m pytest "$@"
