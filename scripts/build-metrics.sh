#!/usr/bin/env bash
# Build the autoscaling metrics pipeline of the local cluster from the Go module proxy:
#   prometheus          Prometheus with Kubernetes service discovery (Debian's package is built
#                       without it), its discovery plugins trimmed as upstream's `make plugins`
#                       does, to kubernetes (and file/http, which it always has)
#   prometheus-adapter  custom.metrics.k8s.io, for the chart's HPA on queue depth
#   keda                KEDA's operator and metrics server (external.metrics.k8s.io), for the
#                       chart's ScaledObject and scale to zero, with KEDA's own install manifests
#                       (its kustomize tree) beside them, so the tests apply what a user applies
# Usage: build-metrics.sh [COMPONENT...]   (default: all three; each is built only when missing).
# Each lands in ${CLIPSERVE_CACHE:-~/.cache/clipserve}/k8s/<component>-<version>/bin, built into
# a temp dir and moved into place, so an interrupted build is redone. The last stdout line is
# the bin directory of the last component named. Env: K8S_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=k8s/versions.env
source "$here/k8s/versions.env"

root="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}/k8s"
jobs="${K8S_BUILD_JOBS:-2}"

# The same module and build caches as build-k8s.sh: all three use the Kubernetes libraries.
export GOPATH="$root/go" GOMODCACHE="$root/go/pkg/mod" GOCACHE="$root/go/cache"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -modcacherw"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

log() { echo "build-metrics: $*" >&2; }
# The module's source folder in the module cache (downloaded if absent).
module_dir() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'; }
gobuild() { nice -n 10 go build -p "$jobs" -trimpath -mod=mod "$@"; }

# A wrapper module requiring one version of $1 with its replace and exclude directives copied
# (`go install pkg@version` refuses those, and asks the proxy for a version list it may refuse),
# so dependencies resolve exactly as in the project's own build. $2: version, $3: its source
# dir, $4: the wrapper's folder.
write_wrapper() {
  local mod=$1 version=$2 dir=$3 src=$4
  mkdir -p "$src"
  {
    printf 'module clipserve.local/%s\n\ngo 1.26.0\n\nrequire %s %s\n\n' "${src##*/}" "$mod" "$version"
    awk '/^(replace|exclude) \($/ { block = 1 }
         block { print; if ($0 ~ /^\)/) block = 0; next }
         /^(replace|exclude) / { print }' "$dir/go.mod"
  } >"$src/go.mod"
}

# $1: component; sets out (its folder) and bins (the binaries it provides).
component() {
  case "$1" in
    prometheus) out="$root/prometheus-$PROMETHEUS_VERSION"; bins=(prometheus) ;;
    prometheus-adapter) out="$root/prometheus-adapter-$PROMETHEUS_ADAPTER_VERSION"; bins=(prometheus-adapter) ;;
    keda) out="$root/keda-$KEDA_VERSION"; bins=(keda keda-adapter) ;;
    *) log "unknown component $1 (prometheus, prometheus-adapter, keda)"; exit 2 ;;
  esac
}

built() { local b; for b in "${bins[@]}"; do [[ -x "$out/bin/$b" ]] || return 1; done; }

build_prometheus() {
  local mod="github.com/prometheus/prometheus" dir src="$out/src/prometheus" pkg
  log "prometheus $PROMETHEUS_VERSION (module $PROMETHEUS_MODULE_VERSION), kubernetes discovery only"
  dir="$(module_dir "$mod@$PROMETHEUS_MODULE_VERSION")"
  write_wrapper "$mod" "$PROMETHEUS_MODULE_VERSION" "$dir" "$src"
  # cmd/prometheus, its plugins import (every discovery plugin) replaced by the ones used here,
  # as a plugins.yml naming only them would generate.
  cp "$dir/cmd/prometheus/main.go" "$src/main.go"
  chmod u+w "$src/main.go"
  grep -q '"github.com/prometheus/prometheus/plugins"' "$src/main.go" \
    || { log "cmd/prometheus/main.go no longer imports the plugins package"; exit 1; }
  sed -i 's#_ "github.com/prometheus/prometheus/plugins".*#_ "github.com/prometheus/prometheus/discovery/kubernetes"\n\t_ "github.com/prometheus/prometheus/discovery/file"\n\t_ "github.com/prometheus/prometheus/discovery/http"#' "$src/main.go"
  pkg="github.com/prometheus/common/version"
  (cd "$src" && gobuild -ldflags "-s -w -X $pkg.Version=${PROMETHEUS_VERSION#v} -X $pkg.Branch=module-proxy" \
    -o "$work/prometheus" .)
  mv -f "$work/prometheus" "$out/bin/prometheus"
}

build_adapter() {
  local mod="sigs.k8s.io/prometheus-adapter" dir src="$out/src/prometheus-adapter"
  log "prometheus-adapter $PROMETHEUS_ADAPTER_VERSION"
  dir="$(module_dir "$mod@$PROMETHEUS_ADAPTER_VERSION")"
  write_wrapper "$mod" "$PROMETHEUS_ADAPTER_VERSION" "$dir" "$src"
  (cd "$src" && gobuild -ldflags "-s -w" -o "$work/adapter" "$mod/cmd/adapter")
  mv -f "$work/adapter" "$out/bin/prometheus-adapter"
}

build_keda() {
  local mod="github.com/kedacore/keda/v2" dir src="$out/src/keda"
  log "keda $KEDA_VERSION: operator and metrics server (every scaler is one package: a long build)"
  dir="$(module_dir "$mod@$KEDA_VERSION")"
  write_wrapper "$mod" "$KEDA_VERSION" "$dir" "$src"
  local ld="-s -w -X $mod/version.Version=${KEDA_VERSION#v} -X $mod/version.GitCommit=module-proxy"
  # One go build for both commands so their shared packages compile once.
  (cd "$src" && gobuild -ldflags "$ld" -o "$work/" "$mod/cmd/operator" "$mod/cmd/adapter")
  rm -rf "$out/manifests/keda"
  mkdir -p "$out/manifests"
  # config/ is KEDA's kustomize tree; config/minimal is its release's core install (no webhooks).
  cp -r "$dir/config" "$out/manifests/keda"
  chmod -R u+w "$out/manifests/keda"
  mv -f "$work/operator" "$out/bin/keda"
  mv -f "$work/adapter" "$out/bin/keda-adapter"
}

want=("$@")
[[ $# -gt 0 ]] || want=(prometheus prometheus-adapter keda)
for name in "${want[@]}"; do component "$name"; done  # unknown names fail before any build
for name in "${want[@]}"; do
  component "$name"
  if ! built; then
    command -v go >/dev/null || { log "go is required (>= 1.26)"; exit 1; }
    mkdir -p "$out/bin"
    work="$(mktemp -d "$root/tmp-metrics.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    t0=$SECONDS
    case "$name" in
      prometheus) build_prometheus ;;
      prometheus-adapter) build_adapter ;;
      keda) build_keda ;;
    esac
    echo "$(date -u +%FT%TZ) $name $((SECONDS - t0))s" >>"$out/build-times.log"
    rm -rf "$work"
  fi
done
echo "$out/bin"
