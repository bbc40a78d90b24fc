#!/usr/bin/env bash
# Build the real test node's NetworkPolicy enforcer: kube-router from the Go module proxy, run
# by tests/support/cluster with only its firewall (--run-firewall; no routing, no service proxy), which
# programs iptables and ipset from the cluster's NetworkPolicies. The CNI bridge plugin the node
# uses enforces none by itself. Installs Debian's ipset, which kube-router calls.
# The binary lands in ${CLIPSERVE_CACHE:-~/.cache/clipserve}/k8s/netpol_kube-router-<version>/bin,
# built into a temp dir and moved into place, so an interrupted build is redone. The last stdout
# line is that bin directory. Env: K8S_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=k8s/versions.env
source "$here/k8s/versions.env"

root="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}/k8s"
out="$root/netpol_kube-router-${KUBE_ROUTER_VERSION}"
bin="$out/bin"
jobs="${K8S_BUILD_JOBS:-2}"
mod="github.com/cloudnativelabs/kube-router/v2"

# The same module and build caches as build-k8s.sh and build-node.sh (Kubernetes libraries).
export GOPATH="$root/go" GOMODCACHE="$root/go/pkg/mod" GOCACHE="$root/go/cache"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -modcacherw"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

log() { echo "build-netpol: $*" >&2; }

install_debs() {
  dpkg-query -W -f='${Status}' ipset 2>/dev/null | grep -q "install ok installed" && return 0
  local sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  log "apt-get install ipset"
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends ipset >&2
}

install_debs
if [[ -x "$bin/kube-router" ]]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { log "go is required (>= 1.26)"; exit 1; }
mkdir -p "$bin"
work="$(mktemp -d "$root/tmp-netpol.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "kube-router $KUBE_ROUTER_VERSION into $bin (go build -p $jobs)"
t0=$SECONDS
# The module has no replace directives, so `go install pkg@version` resolves it as upstream does.
GOBIN="$work" nice -n 10 go install -p "$jobs" -trimpath \
  -ldflags "-s -w -X $mod/pkg/version.Version=$KUBE_ROUTER_VERSION" \
  "$mod/cmd/kube-router@$KUBE_ROUTER_VERSION"
mv -f "$work/kube-router" "$bin/kube-router"
echo "$(date -u +%FT%TZ) kube-router $((SECONDS - t0))s" >>"$out/build-times.log"
"$bin/kube-router" --version >&2
echo "$bin"
