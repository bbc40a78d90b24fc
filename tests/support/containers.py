"""Run an image with podman the way the kubelet would run a rendered pod's container.

`run_pod_container` turns a chart's pod spec and container into `podman run` arguments: command
and args, env, volume mounts (emptyDir as a fresh world-writable host folder, as the kubelet
makes it), the pod and container securityContext (uid/gid, fsGroup, read-only root without
podman's own tmpfs mounts, dropped capabilities, no privilege escalation) and the memory limit.
Fields it cannot reproduce fail loudly instead of being dropped. The container runs in its own
network namespace (slirp4netns), with its first port published on a free loopback port: podman
never touches the host's network, and the chart's port stays the one the image listens on.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
PODMAN = ["bash", str(ROOT / "scripts" / "podman.sh")]
Obj = dict[str, Any]
NAME_PREFIX = "clipserve-test-"  # then the test process's pid


def podman(
    *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run podman with the project's configuration (scripts/podman.sh)."""
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def build_images() -> dict[str, str]:
    """`make images` (a no-op when nothing changed): {"service": id, "operator": id}.

    Image IDs, not names: another checkout on the same machine shares podman's storage and may
    tag a build of its own code with the same names while these tests run.
    """
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-images.sh")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    names = dict(zip(("service", "operator"), proc.stdout.split()[-2:], strict=True))
    ids = podman("image", "inspect", "--format", "{{.Id}}", *names.values()).stdout.split()
    return dict(zip(names, ids, strict=True))


def remove_stale_containers() -> None:
    """Remove test containers whose test process is gone (killed before its finally ran)."""
    names = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    for name in names:
        if not name.startswith(NAME_PREFIX):
            continue
        pid = int(name.removeprefix(NAME_PREFIX).split("-")[0])
        if not Path(f"/proc/{pid}").exists():
            podman("rm", "--force", "--time", "0", name, check=False, timeout=120)


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


@dataclass
class PodContainer:
    """A container started from a pod spec: its name, its published URL and its grace period."""

    name: str
    url: str
    grace_s: int
    pre_stop: list[str] | None

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def state(self) -> Obj:
        out = podman("inspect", "--format", "{{json .State}}", self.name).stdout
        return json.loads(out)

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *cmd, check=False, timeout=120)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the container stops within `timeout`, else None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state["Status"] in ("exited", "stopped"):
                return int(state["ExitCode"])
            time.sleep(0.2)
        return None

    def get(self, path: str, timeout: float = 30) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout)

    def post(self, path: str, body: object, timeout: float = 120) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=timeout)


def _volume_args(pod: Obj, container: Obj, scratch: Path) -> list[str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args: list[str] = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert set(volume) == {"name", "emptyDir"}, (
            f"only emptyDir volumes are reproduced: {volume}"
        )
        host = scratch / mount["name"]
        host.mkdir()
        host.chmod(0o777)  # the kubelet's emptyDir: writable by whatever uid the pod runs as
        options = "ro" if mount.get("readOnly") else "rw"
        args += ["--volume", f"{host}:{mount['mountPath']}:{options}"]
    return args


def _security_args(pod: Obj, container: Obj) -> list[str]:
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    args: list[str] = []
    if uid is not None:
        args += ["--user", f"{uid}:{gid if gid is not None else uid}"]
    if csc.get("runAsNonRoot", psc.get("runAsNonRoot")):
        assert uid not in (None, 0), "runAsNonRoot without a non-root runAsUser"
    if "fsGroup" in psc:
        args += ["--group-add", str(psc["fsGroup"])]
    if csc.get("readOnlyRootFilesystem"):
        # podman would mount its own tmpfs on /tmp, /run and /var/tmp; the kubelet does not.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if csc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for cap in csc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    for cap in csc.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap]
    return args


def _env_args(container: Obj) -> list[str]:
    args: list[str] = []
    for var in container.get("env", []):
        assert "value" in var, f"env from a secret or field is not reproduced: {var}"
        args += ["--env", f"{var['name']}={var['value']}"]
    return args


def _pod_args(image: str, pod: Obj, container: Obj, scratch: Path, *extra: str) -> list[str]:
    """`podman run` arguments from the pod spec, from the security context to the image's args."""
    args = [
        *_security_args(pod, container),
        *_volume_args(pod, container, scratch),
        *_env_args(container),
        *extra,
    ]
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        args += ["--memory", str(_memory_bytes(limits["memory"]))]
    if "command" in container:
        args += ["--entrypoint", json.dumps(container["command"])]
    return [*args, image, *container.get("args", [])]


@contextmanager
def run_pod_container(image: str, pod: Obj, index: int = 0) -> Iterator[PodContainer]:
    """Start `image` as pod.containers[index] would run; removed on exit, whatever happened."""
    container = pod["containers"][index]
    name = f"{NAME_PREFIX}{os.getpid()}-{time.monotonic_ns() % 10**9}"
    port = container["ports"][0]["containerPort"]
    host_port = free_port()
    with tempfile.TemporaryDirectory(prefix="podvols-") as scratch:
        args = [
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "slirp4netns",
            "--publish",
            f"127.0.0.1:{host_port}:{port}",
            *_pod_args(image, pod, container, Path(scratch)),
        ]
        try:
            podman(*args, timeout=120)
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
            yield PodContainer(
                name=name,
                url=f"http://127.0.0.1:{host_port}",
                grace_s=int(pod.get("terminationGracePeriodSeconds", 30)),
                pre_stop=pre_stop.get("command"),
            )
        finally:
            podman("rm", "--force", "--time", "0", name, check=False, timeout=120)


def run_to_completion(
    image: str, pod: Obj, container: Obj, timeout: float = 600
) -> tuple[int, str, str]:
    """Run an init container of the pod to its end, with the file the kubelet mounts at its
    terminationMessagePath: (exit code, termination message, logs)."""
    name = f"{NAME_PREFIX}{os.getpid()}-{time.monotonic_ns() % 10**9}"
    with tempfile.TemporaryDirectory(prefix="podvols-") as scratch:
        message = Path(scratch) / "termination-log"
        message.touch()
        message.chmod(0o666)  # as the kubelet creates it: writable by the pod's uid
        path = container.get("terminationMessagePath", "/dev/termination-log")
        mount = ["--volume", f"{message}:{path}:rw"]
        args = ["run", "--name", name, "--network", "none"]
        args += _pod_args(image, pod, container, Path(scratch), *mount)
        try:
            done = podman(*args, timeout=timeout, check=False)
            return done.returncode, message.read_text(), done.stdout + done.stderr
        finally:
            podman("rm", "--force", "--time", "0", name, check=False, timeout=120)
