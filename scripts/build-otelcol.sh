#!/usr/bin/env bash
# Build the OpenTelemetry Collector the tracing tests export to, from the Go module proxy:
# scripts/otelcol/main.go (the OTLP receiver and the file exporter) against one pinned collector
# release (OTELCOL_VERSION in k8s/versions.env). Only when missing: it lands in
# ${CLIPSERVE_CACHE:-~/.cache/clipserve}/otelcol-<version>/bin/otelcol-clipserve, built in a temp
# dir and moved into place, so an interrupted build is redone; each build's time is appended to
# build-times.log beside it. The last stdout line is the binary's path.
# Env: K8S_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=k8s/versions.env
source "$here/k8s/versions.env"

cache="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}"
out="$cache/otelcol-$OTELCOL_VERSION"
bin="$out/bin/otelcol-clipserve"
jobs="${K8S_BUILD_JOBS:-2}"
log() { echo "build-otelcol: $*" >&2; }

if [[ ! -x "$bin" ]]; then
  command -v go >/dev/null || { log "go is required (>= 1.26)"; exit 1; }
  # Its own module and build caches: the collector shares few modules with Kubernetes.
  export GOPATH="$out/go" GOMODCACHE="$out/go/pkg/mod" GOCACHE="$out/go/cache"
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -modcacherw"
  export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
  mkdir -p "$out/bin"
  work="$(mktemp -d "$out/tmp.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  t0=$SECONDS
  log "collector $OTELCOL_VERSION: otlp receiver, file exporter"
  core="go.opentelemetry.io/collector"
  contrib="github.com/open-telemetry/opentelemetry-collector-contrib"
  cp "$here/otelcol/main.go" "$work/main.go"
  # Every module main.go imports, at the one release; `go mod tidy` adds what they require.
  cat >"$work/go.mod" <<MOD
module clipserve.local/otelcol

go 1.26.0

require (
	$contrib/exporter/fileexporter $OTELCOL_VERSION
	$core/component $OTELCOL_STABLE_VERSION
	$core/confmap $OTELCOL_STABLE_VERSION
	$core/confmap/provider/envprovider $OTELCOL_STABLE_VERSION
	$core/confmap/provider/fileprovider $OTELCOL_STABLE_VERSION
	$core/confmap/provider/yamlprovider $OTELCOL_STABLE_VERSION
	$core/exporter $OTELCOL_STABLE_VERSION
	$core/otelcol $OTELCOL_VERSION
	$core/receiver $OTELCOL_STABLE_VERSION
	$core/receiver/otlpreceiver $OTELCOL_VERSION
	$core/service $OTELCOL_VERSION
)
MOD
  (cd "$work" && go mod tidy >&2 \
    && nice -n 10 go build -p "$jobs" -trimpath -ldflags "-s -w -X main.version=${OTELCOL_VERSION#v}" \
      -o "$work/otelcol-clipserve" .)
  mv -f "$work/otelcol-clipserve" "$bin"
  echo "$(date -u +%FT%TZ) otelcol-clipserve $((SECONDS - t0))s" >>"$out/build-times.log"
fi
echo "$bin"
