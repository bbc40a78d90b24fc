#!/usr/bin/env bash
# Export an image from the project's podman storage (scripts/build-images.sh) to an OCI archive
# that keeps its full name, for a node's containerd:
#   bash scripts/export-image.sh ghcr.io/clipserve/clipserve:0.1.0 /var/tmp/clipserve.tar
#   ctr -n k8s.io images import /var/tmp/clipserve.tar
# Layers are stored uncompressed: the archive only travels to a local containerd, and gzip
# costs minutes for the service image (6.1 GB: 1m45s uncompressed vs 4m53s compressed to 3.3 GB
# on 2 busy cores). The last stdout line is the archive's path.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
image=${1:?usage: export-image.sh IMAGE OUT}
out=${2:?usage: export-image.sh IMAGE OUT}
pm() { bash "$here/podman.sh" "$@"; }

pm image exists "$image" || { echo "export-image: no image $image; build it first (make images)" >&2; exit 1; }
# Written beside the target and renamed, so a reader never sees half an archive.
pm save --format oci-archive --uncompressed -q -o "$out.tmp.$$" "$image"
mv -f "$out.tmp.$$" "$out"
echo "$out"
