#!/usr/bin/env bash
# Build and install what the real test node (tests/support/cluster/realnode.py) runs beside the control
# plane: containerd (+ its runc shim and ctr) and CoreDNS (scripts/node/coredns: the plugins the
# node uses) from the Go module proxy, the pod sandbox's pause binary and the tests' probe client
# (scripts/node/), and Debian's runc, CNI plugins and iptables. kubelet and kube-proxy come with
# the control plane (scripts/build-k8s.sh).
# Binaries land in ${CLIPSERVE_CACHE:-~/.cache/clipserve}/k8s/node_<versions>/bin, built into a
# temp dir and moved into place, so an interrupted build is redone. The last stdout line is that
# bin directory. Env: K8S_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=k8s/versions.env
source "$here/k8s/versions.env"

root="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}/k8s"
out="$root/node_containerd-${CONTAINERD_VERSION}_coredns-${COREDNS_VERSION}"
bin="$out/bin"
jobs="${K8S_BUILD_JOBS:-2}"
# pause and probe are rebuilt (a second or two) whenever their source changes.
probe_key="$(cat "$here"/node/pause/main.go "$here"/node/probe/main.go | sha256sum | cut -c1-64)"

# The same module and build caches as build-k8s.sh: containerd and CoreDNS share many modules.
export GOPATH="$root/go" GOMODCACHE="$root/go/pkg/mod" GOCACHE="$root/go/cache"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -modcacherw"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

debs=(runc containernetworking-plugins iptables)
containerd_cmds=(containerd containerd-shim-runc-v2 ctr)
log() { echo "build-node: $*" >&2; }
missing() { for b in "$@"; do [[ -x "$bin/$b" ]] || echo "$b"; done; }
goinstall() { GOBIN="$1" nice -n 10 go install -p "$jobs" -trimpath "${@:2}"; }
timed() { local t0=$SECONDS; "$@"; echo "$(date -u +%FT%TZ) $1 $((SECONDS - t0))s" >>"$out/build-times.log"; }

install_debs() {
  local want=() d
  for d in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || want+=("$d")
  done
  [[ ${#want[@]} -gt 0 ]] || return 0
  local sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  log "apt-get install ${want[*]}"
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${want[@]}" >&2
}

build_containerd() {
  local want; mapfile -t want < <(missing "${containerd_cmds[@]}")
  [[ ${#want[@]} -gt 0 ]] || return 0
  local tmp="$work/containerd" mod="github.com/containerd/containerd/v2" b pkgs=()
  mkdir -p "$tmp"
  log "containerd $CONTAINERD_VERSION: ${want[*]}"
  for b in "${want[@]}"; do pkgs+=("$mod/cmd/$b@$CONTAINERD_VERSION"); done
  goinstall "$tmp" -ldflags "-s -w -X $mod/version.Version=$CONTAINERD_VERSION" "${pkgs[@]}"
  for b in "${want[@]}"; do mv -f "$tmp/$b" "$bin/$b"; done
}

build_coredns() {
  [[ -n "$(missing coredns)" ]] || return 0
  local src="$out/src/coredns" tmp="$work/coredns"
  mkdir -p "$src" "$tmp"
  log "coredns $COREDNS_VERSION (the plugins the node's Corefile uses)"
  # Wrapper module: scripts/node/coredns/main.go registers only those plugins; their
  # dependencies resolve at the versions CoreDNS's own go.mod pins.
  cp "$here/node/coredns/main.go" "$src/main.go"
  printf 'module clipserve.local/coredns\n\ngo 1.26.0\n\nrequire github.com/coredns/coredns %s\n' \
    "$COREDNS_VERSION" >"$src/go.mod"
  (cd "$src" && nice -n 10 go build -p "$jobs" -trimpath -mod=mod -ldflags "-s -w" -o "$tmp/coredns" .)
  mv -f "$tmp/coredns" "$bin/coredns"
}

probe_current() { [[ -z "$(missing pause probe)" && "$(cat "$bin/probe.src" 2>/dev/null)" == "$probe_key" ]]; }

build_probe() {
  ! probe_current || return 0
  local tmp="$work/probe" p
  mkdir -p "$tmp"
  for p in pause probe; do
    # Standard library only: built as plain files, no module needed.
    (cd "$tmp" && go build -trimpath -ldflags "-s -w" -o "$tmp/$p" "$here/node/$p/main.go")
  done
  mv -f "$tmp/pause" "$tmp/probe" "$bin/"
  echo "$probe_key" >"$bin/probe.src"
}

install_debs
if [[ -z "$(missing "${containerd_cmds[@]}" coredns)" ]] && probe_current; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { log "go is required (>= 1.26)"; exit 1; }
mkdir -p "$bin"
work="$(mktemp -d "$root/tmp-node.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "building into $bin (go build -p $jobs)"
timed build_containerd
timed build_coredns
build_probe
"$bin/containerd" --version >&2
echo "$bin"
