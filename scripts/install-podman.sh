#!/usr/bin/env bash
# Install Debian's podman and what it needs to build and run the images here (no Docker engine,
# no reachable image registry): runc (crun refuses this machine's hybrid cgroups), overlay
# helpers, slirp4netns, debootstrap for the local base image, skopeo/umoci for archives.
# Idempotent: apt-get runs only when a binary is missing. podman's own configuration lives under
# the project's cache and is written by scripts/podman.sh, never in /etc.
# The last stdout line is the absolute path of podman.
set -euo pipefail

packages=(podman buildah runc conmon fuse-overlayfs slirp4netns uidmap catatonit iptables
  containernetworking-plugins debootstrap skopeo umoci)
binaries=(podman buildah runc conmon slirp4netns debootstrap skopeo umoci)

missing=()
for b in "${binaries[@]}"; do command -v "$b" >/dev/null || missing+=("$b"); done
if ((${#missing[@]})); then
  sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  echo "install-podman: apt-get install (missing: ${missing[*]})" >&2
  apt_get() {
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 "$@" >&2
  }
  # The package lists may be stale on a fresh machine; refresh only when an install fails.
  apt_get install -y -q --no-install-recommends "${packages[@]}" \
    || { apt_get update -q && apt_get install -y -q --no-install-recommends "${packages[@]}"; }
fi

podman --version >&2
command -v podman
