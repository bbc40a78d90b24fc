#!/usr/bin/env bash
# podman with the project's own configuration: `bash scripts/podman.sh images`, `... save ...`.
#
# Storage lives under ${CLIPSERVE_CACHE:-~/.cache/clipserve}/podman (the images survive between
# runs; the machine's /var/lib/containers is never touched); run state under /run, so a reboot
# clears it. Settings that this kind of machine needs (shared/notes/containers.md):
# - runc and the cgroupfs manager: cgroups here are hybrid v1+v2, which crun and systemd refuse;
# - default_ulimits within the hard limits: root lacks CAP_SYS_RESOURCE, so the runtime cannot
#   raise RLIMIT_NOFILE past them ("setrlimit RLIMIT_NOFILE: Operation not permitted");
# - host networking by default: podman's bridge network would rewrite the host's iptables and
#   turn on IP forwarding;
# - file events and logs: there is no journald.
# Set CLIPSERVE_PODMAN_PRINT_ENV=1 to print the environment instead of running podman (for
# callers that run podman themselves).
set -euo pipefail

cache_root="${CLIPSERVE_CACHE:-$HOME/.cache/clipserve}"
conf_dir="$cache_root/podman/config"
graphroot="$cache_root/podman/storage"
runroot="${CLIPSERVE_PODMAN_RUNROOT:-/run/clipserve/podman}"

cap() { local hard=$1 want=$2; [[ $hard == unlimited || $hard -gt $want ]] && echo "$want" || echo "$hard"; }
nofile=$(cap "$(ulimit -Hn)" 65536)
nproc=$(cap "$(ulimit -Hu)" 32768)

# Write a file only when its content changes (atomic rename: concurrent callers never read half).
put() {
  local path=$1 content=$2
  [[ -f $path && "$(cat "$path")" == "$content" ]] && return 0
  printf '%s\n' "$content" >"$path.tmp.$$" && mv -f "$path.tmp.$$" "$path"
}

mkdir -p "$conf_dir" "$graphroot"
put "$conf_dir/containers.conf" "[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]
netns = \"host\"
log_driver = \"k8s-file\"

[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
tmp_dir = \"$runroot/libpod\""
put "$conf_dir/storage.conf" "[storage]
driver = \"overlay\"
graphroot = \"$graphroot\"
runroot = \"$runroot/storage\""

export CONTAINERS_CONF="$conf_dir/containers.conf"
export CONTAINERS_STORAGE_CONF="$conf_dir/storage.conf"
if [[ ${CLIPSERVE_PODMAN_PRINT_ENV:-} == 1 ]]; then
  echo "CONTAINERS_CONF=$CONTAINERS_CONF"
  echo "CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
  exit 0
fi
command -v podman >/dev/null || { echo "podman.sh: podman is missing; run scripts/install-podman.sh" >&2; exit 1; }
if [[ "$(id -u)" -ne 0 ]]; then
  exec sudo env CONTAINERS_CONF="$CONTAINERS_CONF" CONTAINERS_STORAGE_CONF="$CONTAINERS_STORAGE_CONF" podman "$@"
fi
exec podman "$@"
