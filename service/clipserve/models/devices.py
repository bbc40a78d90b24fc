"""The device models run on, and why CUDA is unusable when it is.

A process that was given a GPU must never compute on the CPU: in a pod it would hold the GPU,
turn Ready and serve 10-50x slower. So `auto` picks the CPU only when no GPU was assigned, and
asking for CUDA where it cannot work stops start-up with the cause: no driver in the container,
a driver too old for this torch build's CUDA, or a torch build without CUDA.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Oldest driver each CUDA major version runs on (NVIDIA's minor-version compatibility table,
# docs.nvidia.com/deploy/cuda-compatibility).
MIN_DRIVER = {13: 580, 12: 525, 11: 450}
# Variables through which a container runtime or the user hand this process GPUs; the values
# that mean "none" (NVIDIA container toolkit: void/none/empty; CUDA: empty or -1).
GPU_VARIABLES = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
_NO_GPU_VALUES = {"", "void", "none", "-1"}
DRIVER_VERSION_FILES = (Path("/proc/driver/nvidia/version"), Path("/sys/module/nvidia/version"))


class DeviceError(Exception):
    """The requested or assigned device cannot be used; the message says why and what to do."""


def assigned_gpus(env: Mapping[str, str]) -> str | None:
    """`NAME=value` of the variable that gave this process GPUs, or None."""
    for name in GPU_VARIABLES:
        value = env.get(name)
        if value is not None and value.strip().lower() not in _NO_GPU_VALUES:
            return f"{name}={value.strip()}"
    return None


def driver_version(files: tuple[Path, ...] = DRIVER_VERSION_FILES) -> str | None:
    """The loaded NVIDIA kernel driver's version (e.g. 535.104.05), or None when none is visible."""
    for path in files:
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        match = re.search(r"\b(\d{3,}\.\d+(?:\.\d+)?)\b", text)
        if match:
            return match.group(1)
    return None


def min_driver(cuda: str) -> int | None:
    """The oldest driver branch a CUDA version (e.g. "13.0") runs on, if known."""
    return MIN_DRIVER.get(int(cuda.split(".")[0]))


def explain(
    *, torch_version: str, cuda: str | None, driver: str | None, gpu_nodes: bool, torch_says: str
) -> str:
    """Why CUDA is unusable, from what the process can observe (pure, for tests)."""
    if cuda is None:
        return f"this torch build ({torch_version}) has no CUDA support"
    need = min_driver(cuda)
    needs = f"torch {torch_version} is built for CUDA {cuda}" + (
        f", which needs NVIDIA driver >= {need}" if need else ""
    )
    if driver is None:
        return (
            f"no NVIDIA driver is visible in this container ({needs}): the node has no GPU "
            "driver, or the container did not run under the NVIDIA container runtime (on "
            "Kubernetes: runtimeClassName nvidia where it is not the default)"
        )
    if need and int(driver.split(".")[0]) < need:
        return (
            f"the node's NVIDIA driver {driver} is too old: {needs}; upgrade the driver or use "
            f"an image with a torch build for CUDA {_cuda_for(driver)} (see service/Dockerfile, "
            "TORCH_INDEX_URL)"
        )
    if not gpu_nodes:
        return (
            f"NVIDIA driver {driver} is loaded but no GPU device (/dev/nvidiaN) is in this "
            "container: it did not run under the NVIDIA container runtime (on Kubernetes: "
            f"runtimeClassName nvidia where it is not the default); {needs}"
        )
    return f"NVIDIA driver {driver}, {needs}; torch: {torch_says or 'no usable CUDA device'}"


def _cuda_for(driver: str) -> str:
    """The newest CUDA major a driver runs, as a hint ("12.x")."""
    branch = int(driver.split(".")[0])
    fits = [major for major, need in MIN_DRIVER.items() if branch >= need]
    return f"{max(fits)}.x" if fits else "(none: the driver is older than any supported CUDA)"


@functools.cache
def _probe_cuda() -> tuple[bool, str]:
    """Whether CUDA is usable, and what torch warned while finding out (it warns only once)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = torch.cuda.is_available()
    said = "; ".join(str(w.message).strip().splitlines()[0] for w in caught if str(w.message))
    return usable, said


def cuda_problem() -> str | None:
    """None when CUDA is usable, else why not."""
    usable, said = _probe_cuda()
    if usable:
        return None
    return explain(
        torch_version=torch.__version__,
        cuda=torch.version.cuda,
        driver=driver_version(),
        gpu_nodes=any(Path("/dev").glob("nvidia[0-9]*")),
        torch_says=said,
    )


def select_device(requested: str, env: Mapping[str, str] | None = None) -> torch.device:
    """The device for `requested` (auto, cpu, cuda, cuda:N, ...); DeviceError when unusable."""
    env = os.environ if env is None else env
    assigned = assigned_gpus(env)
    if requested == "auto":
        problem = cuda_problem()
        if problem is None:
            return torch.device("cuda")
        if assigned:
            raise DeviceError(
                f"a GPU was assigned ({assigned}) but CUDA is not usable: {problem}. Refusing "
                "to compute on the CPU; set device cpu (CLIPSERVE_DEVICE=cpu) to do so anyway"
            )
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise DeviceError(f"device {requested!r} is not one torch knows ({exc})") from exc
    if device.type == "cuda":
        problem = cuda_problem()
        if problem is not None:
            raise DeviceError(f"device {requested}: CUDA is not usable: {problem}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {requested}: only {count} CUDA device(s) are visible")
    elif device.type == "cpu" and assigned:
        log.warning("a GPU was assigned (%s) but device is cpu: computing on the CPU", assigned)
    return device
