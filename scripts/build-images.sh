#!/usr/bin/env bash
# Build the clipserve and clipserve-operator images with podman from service/Dockerfile and
# operator/Dockerfile, tagged exactly as the charts' defaults (values.yaml image.repository, tag
# = Chart.yaml appVersion). Usage: scripts/build-images.sh [service] [operator] (default: both).
#
# No image registry is reachable here, so the official bases of the FROM lines (python, node) are
# replaced by stand-ins made locally with debootstrap, passed in as build arguments; the
# Dockerfiles stay what a Docker user builds. The stand-ins also carry this machine's locally
# added CA certificates (TLS to package registries is re-signed on the way out here).
#
# Cached by content: each image carries a label with the hash of its inputs (Dockerfile, the
# files it copies, build arguments, base image); an image whose label matches is not rebuilt, so
# a second run with unchanged inputs does nothing. Storage: ${CLIPSERVE_CACHE}/podman.
# Env: TORCH_VARIANT (e.g. cu126: torch from download.pytorch.org/whl/<variant>, tag suffix
# -<variant>; default: PyPI's build, CUDA 13), DEBIAN_MIRROR.
# The last stdout lines are the built image names, one per line.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cache_root="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}"
work=""
trap '[[ -z "$work" ]] || rm -rf "$work"' EXIT
log() { echo "build-images: $*" >&2; }
pm() { bash "$here/podman.sh" "$@"; }

bash "$here/install-podman.sh" >/dev/null
# One build at a time per cache: a second caller waits, then finds its images up to date (two
# service builds at once would also need the disk twice).
mkdir -p "$cache_root/podman"
exec 9>"$cache_root/podman/build.lock"
flock 9

# The names the charts pull by default.
chart_image() {
  local chart="$root/charts/$1" repo version
  repo=$(sed -n '/^image:/,/^[^ #]/s/^  repository: *//p' "$chart/values.yaml")
  version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/Chart.yaml")
  echo "$repo:$version"
}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/service/pyproject.toml")
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)

# Free space where podman keeps its layers, in GB.
free_gb() { mkdir -p "$cache_root/podman"; echo $(($(df -Pk "$cache_root/podman" | awk 'NR==2 {print $4}') / 1024 / 1024)); }
disk_hint() {
  log "building $1 needs about $2 GB free in $cache_root/podman; $(free_gb) GB are free."
  log "free some space, or point CLIPSERVE_CACHE at a larger disk."
}
# Checked before a build starts, so that a full disk is named at once rather than as a failed
# layer commit minutes later (a layer needs room twice over while it is committed).
require_disk() {
  local need_gb=$1 what=$2
  if (($(free_gb) < need_gb)); then
    disk_hint "$what" "$need_gb"
    exit 1
  fi
}

# --- local stand-ins for the official base images ------------------------------------------
mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}"
mirror="${mirror:-http://deb.debian.org/debian}"
base_recipe="bookworm minbase python3,python3-venv,ca-certificates $mirror"
base_hash=$(cat <(echo "$base_recipe") /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-12)
python_base="localhost/clipserve-base/python:bookworm-$base_hash"
node_base="localhost/clipserve-base/node:bookworm-$base_hash"

make_python_base() {
  pm image exists "$python_base" && return 0
  require_disk 2 "the base image"
  local rootfs
  work="$(mktemp -d "$cache_root/podman/base.XXXXXX")"
  rootfs="$work/rootfs"
  log "debootstrap bookworm (python3) from $mirror -> $python_base"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # `podman import` sets no PATH (buildah adds one, containerd does not): say it.
  tar -C "$rootfs" -c . | pm import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' -q - "$python_base" >/dev/null
  rm -rf "$work"
}

make_node_base() {
  pm image exists "$node_base" && return 0
  make_python_base
  local ctr="clipserve-node-base"
  log "adding nodejs and npm -> $node_base"
  pm rm -f "$ctr" >/dev/null 2>&1 || true
  pm run --name "$ctr" --network host "$python_base" sh -c \
    'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*' \
    >/dev/null
  pm commit -q --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' "$ctr" "$node_base" >/dev/null
  pm rm -f "$ctr" >/dev/null
}

# --- the images -------------------------------------------------------------------------------
# Hash of everything that decides the image: build arguments (base image names, whose tags carry
# their recipe's hash), and the files the
# Dockerfile copies (the context is limited to these by .dockerignore).
inputs_hash() {
  local args=$1; shift
  (
    cd "$root"
    echo "$args"
    find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -c1-16
}

label() { pm image inspect --format "{{ index .Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# build NAME DOCKERFILE TAG "BUILD ARGS" INPUT_PATH...
# NEED_GB (the free space the build needs) and BIG_LAYER ("KEY=HASH": a label naming what the
# image's largest layer was built from) come from the caller's environment. When the image on
# hand carries the same BIG_LAYER label, podman's layer cache still holds that layer and the
# build needs only SMALL_NEED_GB.
build() {
  local name=$1 dockerfile=$2 tag=$3 args=$4; shift 4
  local hash t0 need=$NEED_GB labels
  hash=$(inputs_hash "$args" "$dockerfile" .dockerignore "$@")
  labels=(--label "io.clipserve.inputs=$hash")
  if [[ "$(label "$tag" io.clipserve.inputs)" == "$hash" ]]; then
    log "$tag is up to date (inputs $hash)"
    return 0
  fi
  if [[ -n "${BIG_LAYER:-}" ]]; then
    labels+=(--label "$BIG_LAYER")
    [[ "$(label "$tag" "${BIG_LAYER%%=*}")" != "${BIG_LAYER#*=}" ]] || need=$SMALL_NEED_GB
  fi
  require_disk "$need" "the $name image"
  log "building $tag from $dockerfile (inputs $hash)"
  t0=$SECONDS
  local build_args=()
  for a in $args; do build_args+=(--build-arg "$a"); done
  if ! pm build --network host --pull=never --layers -q \
    -f "$root/$dockerfile" "${build_args[@]}" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    "${labels[@]}" -t "$tag" "$root" >/dev/null; then
    log "building $tag failed"
    (($(free_gb) >= NEED_GB)) || disk_hint "the $name image" "$NEED_GB"
    exit 1
  fi
  log "built $tag in $((SECONDS - t0)) s, $(pm image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1/1e9}')"
}

targets=("$@")
((${#targets[@]})) || targets=(service operator)
built=()
for target in "${targets[@]}"; do
  case "$target" in
  service)
    make_python_base
    variant="${TORCH_VARIANT:-}"
    tag=$(chart_image clipserve)${variant:+-$variant}
    args="PYTHON_IMAGE=$python_base"
    [[ -z "$variant" ]] || args+=" TORCH_INDEX_URL=https://download.pytorch.org/whl/$variant"
    # torch and its CUDA wheels: a 6 GB layer that needs room twice over while it is committed,
    # plus the wheels pip unpacks. It is rebuilt only when its pin, index, base or the lock
    # file changes; a code edit rebuilds only the small top layers.
    torch_layer=$(
      { echo "$args"; grep -E '^ *"torch(vision)?[=<>~ ]' "$root/service/pyproject.toml"; cat "$root/service/requirements.lock"; } | sha256sum | cut -c1-16
    )
    NEED_GB=18 SMALL_NEED_GB=3 BIG_LAYER="io.clipserve.torch-layer=$torch_layer" \
      build service service/Dockerfile "$tag" "$args" \
      service/pyproject.toml service/README.md service/requirements.lock service/clipserve
    ;;
  operator)
    make_node_base
    tag=$(chart_image clipserve-operator)
    NEED_GB=3 build operator operator/Dockerfile "$tag" "PYTHON_IMAGE=$python_base NODE_IMAGE=$node_base" \
      operator/pyproject.toml operator/README.md operator/requirements.lock operator/clipserve_operator charts/clipserve \
      scripts/install-helm.sh
    ;;
  *) log "unknown image '$target' (service, operator)"; exit 2 ;;
  esac
  built+=("$tag")
done
printf '%s\n' "${built[@]}"
