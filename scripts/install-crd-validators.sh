#!/usr/bin/env bash
# Install the CRD validators the chart tests use for ServiceMonitor and ScaledObject, which the
# Kubernetes OpenAPI schemas (kubernetes-validate) do not cover. They are npm packages generated
# from the upstream CRD schemas (@kubernetes-models/*), pinned by tests/chart/crd_validators/
# package-lock.json and installed with `npm ci` under ~/.cache/clipserve/crd-validators/<hash>/,
# keyed by the hash of the lock file and the validator script. Idempotent.
# The last stdout line is the absolute path of validate.mjs.
set -euo pipefail

src="$(cd "$(dirname "$0")/../tests/chart/crd_validators" && pwd)"
cache_root="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}"
key="$(cat "$src/package.json" "$src/package-lock.json" "$src/validate.mjs" | sha256sum | cut -c1-16)"
dest="$cache_root/crd-validators/$key"

if [[ ! -f "$dest/.installed" ]]; then
  command -v npm >/dev/null || { echo "install-crd-validators: npm is required" >&2; exit 1; }
  rm -rf "$dest" && mkdir -p "$dest"
  cp "$src/package.json" "$src/package-lock.json" "$src/validate.mjs" "$dest/"
  # The packages declare node >=22 but run on node 20 (plain ES2020 + ajv); keep npm quiet.
  (cd "$dest" && npm ci --silent --no-audit --no-fund --engine-strict=false >&2)
  touch "$dest/.installed"
fi
echo "$dest/validate.mjs"
