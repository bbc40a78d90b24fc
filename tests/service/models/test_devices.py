"""Device selection: a process that was given a GPU never computes on the CPU; and what the
CPU offers for bf16 (its units, read from /proc/cpuinfo as real CPUs write it).

CUDA itself is not available on the machines these tests run on, so the "GPU assigned" signal
is simulated through the variables a container runtime sets (NVIDIA_VISIBLE_DEVICES,
CUDA_VISIBLE_DEVICES); the messages are checked against this machine's real torch build and
against the driver situations that cannot be staged here (pure `explain`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clipserve.models import cpu
from clipserve.models.devices import (
    DeviceError,
    assigned_gpus,
    driver_version,
    explain,
    select_device,
)

from tests.support.server import MODEL_CONFIGS, TINY

needs_no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="simulates a GPU assignment where CUDA is unusable"
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": ""}, None),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
        ({"CUDA_VISIBLE_DEVICES": ""}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-8d2f"}, "NVIDIA_VISIBLE_DEVICES=GPU-8d2f"),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, "NVIDIA_VISIBLE_DEVICES=all"),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES=0,1"),
    ],
)
def test_a_gpu_counts_as_assigned_only_when_a_variable_names_devices(env, expected) -> None:
    assert assigned_gpus(env) == expected


def test_driver_version_is_read_from_the_proprietary_and_the_open_module(tmp_path: Path) -> None:
    proprietary = tmp_path / "proprietary"
    proprietary.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    open_module = tmp_path / "open"
    open_module.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n"
    )
    sysfs = tmp_path / "sysfs"
    sysfs.write_text("570.133.20\n")
    missing = tmp_path / "missing"
    assert driver_version((proprietary,)) == "535.104.05"
    assert driver_version((open_module,)) == "580.65.06"
    assert driver_version((missing, sysfs)) == "570.133.20"
    assert driver_version((missing,)) is None


def test_an_old_driver_is_named_with_the_version_this_torch_build_needs() -> None:
    msg = explain(
        torch_version="2.14.1+cu130",
        cuda="13.0",
        driver="535.104.05",
        gpu_nodes=True,
        torch_says="The NVIDIA driver on your system is too old (found version 12020)",
    )
    assert "driver 535.104.05 is too old" in msg
    assert "CUDA 13.0, which needs NVIDIA driver >= 580" in msg
    assert "CUDA 12.x" in msg  # what this driver can run instead


def test_a_missing_driver_and_a_missing_runtime_are_told_apart() -> None:
    no_driver = explain(
        torch_version="2.14.1+cu130", cuda="13.0", driver=None, gpu_nodes=False, torch_says=""
    )
    assert "no NVIDIA driver is visible" in no_driver and "runtimeClassName" in no_driver
    no_devices = explain(
        torch_version="2.14.1+cu130",
        cuda="13.0",
        driver="580.65.06",
        gpu_nodes=False,
        torch_says="",
    )
    assert "580.65.06 is loaded but no GPU device" in no_devices


def test_a_cpu_only_torch_build_is_named() -> None:
    msg = explain(
        torch_version="2.14.1+cpu", cuda=None, driver="580.65.06", gpu_nodes=True, torch_says=""
    )
    assert msg == "this torch build (2.14.1+cpu) has no CUDA support"


@needs_no_cuda
def test_auto_uses_the_cpu_when_no_gpu_was_assigned() -> None:
    assert select_device("auto", {}) == torch.device("cpu")
    assert select_device("auto", {"NVIDIA_VISIBLE_DEVICES": "void"}) == torch.device("cpu")


@needs_no_cuda
def test_auto_refuses_the_cpu_when_a_gpu_was_assigned() -> None:
    with pytest.raises(DeviceError) as err:
        select_device("auto", {"NVIDIA_VISIBLE_DEVICES": "GPU-8d2f"})
    msg = str(err.value)
    assert "a GPU was assigned (NVIDIA_VISIBLE_DEVICES=GPU-8d2f)" in msg
    assert f"built for CUDA {torch.version.cuda}" in msg  # the requirement of this torch build
    assert "CLIPSERVE_DEVICE=cpu" in msg  # the way out, if the CPU is really wanted


@needs_no_cuda
def test_explicit_cuda_fails_with_the_cause_and_cpu_is_still_allowed() -> None:
    with pytest.raises(DeviceError, match="device cuda:0: CUDA is not usable: "):
        select_device("cuda:0", {})
    # Asking for the CPU outright is not a silent fallback: it is what the user chose.
    assert select_device("cpu", {"CUDA_VISIBLE_DEVICES": "0"}) == torch.device("cpu")


def test_an_unknown_device_is_refused_by_name() -> None:
    with pytest.raises(DeviceError, match="device 'tpu' is not one torch knows"):
        select_device("tpu", {})


@needs_no_cuda
@pytest.mark.slow
def test_a_server_given_a_gpu_without_cuda_stops_start_up_and_never_turns_ready() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipserve.cli",
            "serve",
            "--model",
            TINY,
            "--model-config-dir",
            str(MODEL_CONFIGS),
            "--port",
            "0",
        ],
        env={"NVIDIA_VISIBLE_DEVICES": "GPU-8d2f", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "start-up failed: a GPU was assigned (NVIDIA_VISIBLE_DEVICES=GPU-8d2f)" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the CPU's bf16 units ------------------------------------------------------------------

SAPPHIRE_RAPIDS = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
    "flags\t\t: fpu vme sse2 avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8\n"
)
ZEN4 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f avx512bw avx512vl\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sha3 sve i8mm bf16 svebf16\nCPU part\t: 0xd40\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd aes crc32 atomics asimddp\nCPU part\t: 0xd0c\n"


@pytest.mark.parametrize(
    ("cpuinfo", "units"),
    [
        (SAPPHIRE_RAPIDS, ("AMX-BF16", "AVX512-BF16")),
        (ZEN4, ("AVX512-BF16",)),
        (SKYLAKE, ()),  # AVX-512 without its BF16 extension: bf16 only emulated
        (GRAVITON3, ("Arm BF16",)),
        (GRAVITON2, ()),
        ("", ()),
    ],
)
def test_bf16_units_are_read_from_x86_flags_and_arm_features(cpuinfo: str, units) -> None:
    assert cpu.units_in(cpuinfo) == units


def test_the_verdict_names_the_units_or_what_is_missing() -> None:
    usable = cpu.judge(("AMX-BF16", "AVX512-BF16"), True, "2.14.1")
    assert usable.usable
    assert usable.reason == "this CPU has AMX-BF16 and AVX512-BF16 and torch's oneDNN uses it"
    none = cpu.judge((), True, "2.14.1")
    assert not none.usable and "no bf16 units" in none.reason and "slower" in none.reason
    no_kernels = cpu.judge(("Arm BF16",), False, "2.14.1")
    assert not no_kernels.usable
    assert "has Arm BF16, but torch 2.14.1's oneDNN has no bf16 kernels" in no_kernels.reason


def test_this_machines_detection_agrees_with_its_cpuinfo() -> None:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        assert cpu.bf16_support().units == cpu.units_in(f.read())
