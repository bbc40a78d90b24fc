"""What the real node changes on the machine, recorded before it starts and undone after it stops.

Only one real node can run per machine: bridge, iptables, cgroups and sysctls are global. A
machine-wide flock serializes them; whoever takes it first undoes what a crashed earlier run left
(from the record that run wrote), so a new node always starts from the machine's own state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

# The kubelet, kube-proxy and the CNI bridge plugin write these; they are restored on teardown.
SYSCTLS = (
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
)
# Folders the kubelet, containerd and CNI write outside the state dir whatever their flags say,
# each with the name part that marks our files ("" = every new entry is ours). Files that appear
# while the node runs are removed on teardown; podman keeps its own CNI state in /var/lib/cni.
CNI_NETWORK = "clipserve-realnode"
FOREIGN_DIRS = {
    "/var/lib/kubelet": "",
    "/var/log/containers": "",
    "/var/log/pods": "",
    "/run/containerd": "",
    "/var/lib/cni": CNI_NETWORK,
}
# iptables chains the node's components create: kube-proxy's, kubelet's and kube-router's
# (KUBE-ROUTER-*, KUBE-POD-FW-*, KUBE-NWPLCY-*), and our own guard.
CHAIN_PREFIXES = ("KUBE-", "CLIPSERVE-")
GUARD_CHAIN = "CLIPSERVE-NODE"
# ipsets kube-router's firewall creates: its policies' peers, and the temporary sets it swaps in.
IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-", "TMP-")
CGROUP_ROOT = Path("/sys/fs/cgroup")
RECORD_FILE = "machine.json"


class HostError(RuntimeError):
    """The machine could not be prepared for, or restored after, the real node."""


def run(*argv: str, check: bool = True, timeout: float = 120) -> str:
    """Run a host command; its stdout, or HostError with its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise HostError(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def lock_machine(path: Path, holder: str = "", timeout_s: float = 3600) -> int:
    """Take the machine-wide real-node lock, waiting while another session's node runs.

    Returns the locked file descriptor: the lock lasts until every process holding a copy of
    it (this one, and whichever the node passes it to) has closed it or exited.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError as busy:
            current = path.read_text().strip() or "another session"
            if not announced:
                # Past pytest's capture: whoever waits should see why.
                print(f"real node: waiting for {path} ({current})", file=sys.__stderr__, flush=True)
                announced = True
            if time.monotonic() > deadline:
                os.close(fd)
                raise HostError(
                    f"the real node lock {path} is still held after {timeout_s} s ({current})"
                ) from busy
            time.sleep(2)
    # Who holds it, for whoever waits: the lock file's text.
    os.ftruncate(fd, 0)
    os.write(fd, f"held by pid {os.getpid()} {holder}".strip().encode() + b"\n")
    return fd


def _read_sysctl(name: str) -> str | None:
    try:
        return (Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return None


def _tree(root: Path) -> list[str]:
    if not root.exists():
        return []
    return [*sorted(str(p.relative_to(root)) for p in root.rglob("*")), "."]


def record(state_root: Path) -> None:
    """Write down the sysctls and foreign folders as they are now, unless a record exists."""
    path = state_root / RECORD_FILE
    if path.exists():
        return
    data = {
        "sysctls": {name: _read_sysctl(name) for name in SYSCTLS},
        "dirs": {d: _tree(Path(d)) for d in FOREIGN_DIRS},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _mountpoints_under(prefixes: Iterable[Path]) -> list[str]:
    roots = [str(p.resolve()) for p in prefixes]
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == r or point.startswith(r + "/") for r in roots):
            points.append(point)
    return points


def unmount_under(*prefixes: Path) -> None:
    """Detach every mount at or below the given folders, deepest first."""
    for _ in range(5):  # a detached mount can reveal another at the same point
        points = _mountpoints_under(prefixes)
        if not points:
            return
        for point in sorted(set(points), key=len, reverse=True):
            run("umount", "--lazy", point, check=False)
    raise HostError(f"still mounted: {_mountpoints_under(prefixes)}")


def remove_cgroups(prefix: str = "kubepods") -> None:
    """rmdir the kubelet's cgroups (depth-first) under every hierarchy; processes must be gone."""
    left = []
    for hierarchy in CGROUP_ROOT.iterdir():
        for top in hierarchy.glob(f"{prefix}*"):
            for path in sorted(
                (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    path.rmdir()
            try:
                top.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                left.append(f"{top}: {exc.strerror}")
    if left:
        raise HostError("cgroups still in use: " + "; ".join(left))


def _iptables_cleanup(binary: str) -> None:
    for table in ("filter", "nat", "mangle"):
        listing = run(binary, "-w", "-t", table, "-S", check=False).splitlines()
        ours = {
            line.split()[1]
            for line in listing
            if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
        }
        # Unhook our chains from the built-in ones (and from each other) before deleting them.
        for line in listing:
            args = shlex.split(line)
            if args[0] == "-A" and "-j" in args and args[args.index("-j") + 1] in ours:
                run(binary, "-w", "-t", table, "-D", *args[1:], check=False)
        for chain in ours:
            run(binary, "-w", "-t", table, "-F", chain, check=False)
        for chain in ours:
            run(binary, "-w", "-t", table, "-X", chain, check=False)


def _our_chains(binary: str) -> list[str]:
    chains = []
    for table in ("filter", "nat", "mangle"):
        for line in run(binary, "-w", "-t", table, "-S", check=False).splitlines():
            if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES):
                chains.append(f"{binary} {table} {line.split()[1]}")
    return chains


def _our_ipsets() -> list[str]:
    # A machine without ipset has none of kube-router's sets either.
    listing = run("ipset", "list", "-n", check=False) if shutil.which("ipset") else ""
    return [name for name in listing.split() if name.startswith(IPSET_PREFIXES)]


def remove_ipsets() -> None:
    """Destroy kube-router's ipsets; the iptables rules that matched them must be gone first."""
    for name in _our_ipsets():
        run("ipset", "destroy", name, check=False)


def check_restored(bridge: str) -> None:
    """HostError naming whatever a node left behind: its bridge, chains, ipsets or cgroups."""
    left = [f"bridge {bridge}"] if Path(f"/sys/class/net/{bridge}").exists() else []
    left += _our_chains("iptables") + _our_chains("ip6tables")
    left += [f"ipset {name}" for name in _our_ipsets()]
    left += [str(p) for h in CGROUP_ROOT.iterdir() for p in h.glob("kubepods*")]
    if left:
        raise HostError("the real node left behind: " + ", ".join(left))


def remove_iptables_chains() -> None:
    """Delete every KUBE-* and CLIPSERVE-* chain and the rules that jump to them (v4 and v6)."""
    _iptables_cleanup("iptables")
    _iptables_cleanup("ip6tables")


def guard_bridge(bridge: str) -> None:
    """Forward nothing between the pods' bridge and any other interface (pods stay on the host).

    In mangle's FORWARD, which runs before filter's: kube-router keeps its own jump first in
    filter's FORWARD and ACCEPTs there what the pods' policies admit, which would pass a
    guard placed after it.
    """
    mangle = ("iptables", "-w", "-t", "mangle")
    run(*mangle, "-N", GUARD_CHAIN)
    run(*mangle, "-A", GUARD_CHAIN, "-i", bridge, "!", "-o", bridge, "-j", "DROP")
    run(*mangle, "-A", GUARD_CHAIN, "-o", bridge, "!", "-i", bridge, "-j", "DROP")
    run(*mangle, "-I", "FORWARD", "1", "-j", GUARD_CHAIN)


def create_bridge(bridge: str, cidr: str) -> None:
    """The pods' bridge with the node's address (the CNI bridge plugin then finds it ready)."""
    run("ip", "link", "add", bridge, "type", "bridge")
    run("ip", "addr", "add", cidr, "dev", bridge)
    run("ip", "link", "set", bridge, "up")


def delete_bridge(bridge: str) -> None:
    """Remove the bridge if it exists (its veths went with the pods' network namespaces)."""
    if Path(f"/sys/class/net/{bridge}").exists():
        run("ip", "link", "del", bridge)


def _remove_new_entries(root: Path, before: list[str], marker: str) -> None:
    """Remove files that were not there before (and carry marker); then new folders left empty."""
    if not root.exists():
        return
    keep = set(before)
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        if str(path.relative_to(root)) in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()
        elif marker in path.name:
            path.unlink(missing_ok=True)
    if not keep:
        with contextlib.suppress(OSError):
            root.rmdir()


def restore(state_root: Path) -> None:
    """Put back the recorded sysctls and remove what appeared in the foreign folders."""
    path = state_root / RECORD_FILE
    if not path.exists():
        return
    data = json.loads(path.read_text())
    for name, value in data["sysctls"].items():
        if value is not None and _read_sysctl(name) != value:
            (Path("/proc/sys") / name).write_text(value + "\n")
            if _read_sysctl(name) != value:
                raise HostError(f"could not restore {name} to {value}")
    for folder, before in data["dirs"].items():
        _remove_new_entries(Path(folder), before, FOREIGN_DIRS.get(folder, ""))
    path.unlink()


def kill_shims(shim: Path, containerd_socket: Path) -> None:
    """SIGKILL the runc shims our containerd started (our binary, our socket), by their PIDs.

    A shim outlives containerd by design and its bundle (with its pid file) may already be gone,
    so they are found by what they run: this node's shim binary, serving this node's socket.
    """
    want_exe, want_arg = os.path.realpath(shim), str(containerd_socket).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = os.readlink(proc / "exe")
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.realpath(exe) == want_exe and want_arg in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), 9)
