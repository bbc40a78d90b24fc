#!/usr/bin/env bash
# Build a version-matched local control plane from the Go module proxy: kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes), etcd and kwok.
# Binaries land in ${CLIPSERVE_CACHE:-~/.cache/clipserve}/k8s/<versions>/bin; only missing ones
# are built, each written to a temp dir and moved into place, so an interrupted build is redone.
# The last stdout line is the bin directory. Env: K8S_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=k8s/versions.env
source "$here/k8s/versions.env"

root="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}/k8s"
out="$root/kubernetes-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
bin="$out/bin"
jobs="${K8S_BUILD_JOBS:-2}"

# Module and build caches are shared across versions so a version bump recompiles only what changed.
export GOPATH="$root/go" GOMODCACHE="$root/go/pkg/mod" GOCACHE="$root/go/cache"
# -modcacherw: keep the module cache deletable without chmod.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -modcacherw"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
log() { echo "build-k8s: $*" >&2; }
missing() { for b in "$@"; do [[ -x "$bin/$b" ]] || echo "$b"; done; }
gobuild() { nice -n 10 go build -p "$jobs" -trimpath "$@"; }
# Move freshly built binaries from a temp dir into bin/ (rename is atomic on one filesystem).
install_from() { local tmp=$1; shift; for b in "$@"; do mv -f "$tmp/$b" "$bin/$b"; done; }
timed() { local t0=$SECONDS; "$@"; echo "$(date -u +%FT%TZ) $1 $((SECONDS - t0))s" >>"$out/build-times.log"; }

stages="$out/kwok/stages.yaml"
if [[ -z "$(missing "${k8s_cmds[@]}" etcd kwok)" && -f "$stages" ]]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { log "go is required (>= 1.26)"; exit 1; }
mkdir -p "$bin" "$out/src"
# Scratch space for this run only; an interrupted build leaves nothing half-written in bin/.
work="$(mktemp -d "$out/tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "building into $bin (first build takes many minutes; go build -p $jobs)"

build_kwok() {
  [[ -n "$(missing kwok)" ]] || return 0
  local tmp="$work/kwok"; mkdir -p "$tmp"
  log "kwok $KWOK_VERSION"
  # kwok's go.mod has no replace directives, so a plain versioned install works.
  GOBIN="$tmp" nice -n 10 go install -p "$jobs" -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}" \
    "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
  install_from "$tmp" kwok
}

# kwok needs its Stage objects as config; take the defaults shipped in the same kwok module so
# stage templates and binary always match (fast node init, lease heartbeat, instant pod ready).
write_kwok_stages() {
  [[ ! -f "$stages" ]] || return 0
  local mod="$GOMODCACHE/sigs.k8s.io/kwok@${KWOK_VERSION}/kustomize/stage" tmp f
  [[ -d "$mod" ]] || (cd "$out" && go mod download "sigs.k8s.io/kwok@${KWOK_VERSION}")
  mkdir -p "$out/kwok"; tmp="$work/stages.yaml"
  for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    printf -- '---\n' >>"$tmp"; cat "$mod/$f.yaml" >>"$tmp"
  done
  mv -f "$tmp" "$stages"
}

build_etcd() {
  [[ -n "$(missing etcd)" ]] || return 0
  local src="$out/src/etcd" tmp="$work/etcd"; mkdir -p "$tmp"
  log "etcd $ETCD_VERSION"
  # Wrapper module: etcd's own root go.mod uses relative replaces, so require the server module
  # at one version (its sibling modules resolve to the same version) and call etcdmain.
  mkdir -p "$src"
  cp "$here/k8s/etcd-main.go" "$src/main.go"
  printf 'module clipserve.local/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$ETCD_VERSION" >"$src/go.mod"
  (cd "$src" && gobuild -mod=mod -ldflags "-s -w" -o "$tmp/etcd" .)
  install_from "$tmp" etcd
}

build_kubernetes() {
  local want; mapfile -t want < <(missing "${k8s_cmds[@]}")
  [[ ${#want[@]} -gt 0 ]] || return 0
  local src="$out/src/kubernetes" tmp="$work/kubernetes"; mkdir -p "$tmp"
  log "kubernetes $K8S_VERSION: ${want[*]}"
  mkdir -p "$src"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging;
  # the wrapper replaces each with its published version instead (the list comes from that go.mod).
  local gomod
  gomod="$(cd "$src" && GOFLAGS="$GOFLAGS -mod=mod" go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -f "$gomod" ]] || { log "could not download k8s.io/kubernetes@${K8S_VERSION}"; exit 1; }
  {
    printf 'module clipserve.local/kubernetes\n\ngo 1.26.0\n\ngodebug default=go1.26\n\n'
    printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
    awk -v v="$K8S_STAGING_VERSION" '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print "\t" $1 " => " $1 " " v}' "$gomod" | sort -u
    printf ')\n'
  } >"$src/go.mod"
  local minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  local major="${K8S_VERSION#v}"; major="${major%%.*}"
  local ld="-s -w" pkg
  # The same version stamp as release builds, so `kubectl version` and chart kubeVersion checks see it.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  local pkgs=(); for b in "${want[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  # One go build for all commands so their shared packages compile once.
  (cd "$src" && gobuild -mod=mod -ldflags "$ld" -o "$tmp/" "${pkgs[@]}")
  install_from "$tmp" "${want[@]}"
}

timed build_kwok
write_kwok_stages
timed build_etcd
timed build_kubernetes
"$bin/kube-apiserver" --version >&2
echo "$bin"
