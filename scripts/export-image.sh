#!/usr/bin/env bash
# Export an image from the project's podman storage (scripts/build-images.sh) to an OCI archive
# that keeps its full name, for a node's containerd:
#   ctr -n k8s.io images import "$(bash scripts/export-image.sh ghcr.io/clipserve/clipserve:0.1.0 | tail -1)"
# Usage: scripts/export-image.sh IMAGE [OUT]. Without OUT the archive goes to
# ${CLIPSERVE_CACHE}/images/<name>-<image id>.oci.tar and is reused while the image is unchanged
# (older archives of the same name are removed). The last stdout line is the archive's path.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
image=${1:?usage: export-image.sh IMAGE [OUT]}
pm() { bash "$here/podman.sh" "$@"; }

id=$(pm image inspect --format '{{.Id}}' "$image" 2>/dev/null) \
  || { echo "export-image: no image $image; build it first (make images)" >&2; exit 1; }
if [[ $# -ge 2 ]]; then
  out=$2
else
  dir="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}/images"
  stem=$(echo "$image" | tr '/:' '__')
  out="$dir/$stem-${id:0:12}.oci.tar"
  if [[ -f "$out" ]]; then
    echo "$out"
    exit 0
  fi
  mkdir -p "$dir"
  rm -f "$dir/$stem"-*.oci.tar
fi
# Written beside the target and renamed, so a reader never sees half an archive.
pm save --format oci-archive -q -o "$out.tmp.$$" "$image"
mv -f "$out.tmp.$$" "$out"
echo "$out"
