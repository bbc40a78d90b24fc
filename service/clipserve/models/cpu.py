"""What this CPU offers for bf16 matrix work: the one place that looks.

bf16 pays on a CPU only where it has bf16 units (Intel AMX-BF16, AVX512-BF16 on Cooper Lake and
AMD Zen 4/5, Arm's BF16 on Graviton 3/4) and torch's oneDNN kernels use them. Elsewhere torch
still runs bf16, emulated in fp32 arithmetic with conversions on every op: several times slower
than fp32. `bf16_support()` is what the dtype choice asks (models/precision.py), and the one
seam tests replace to stage a CPU with or without those units.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flag -> what it is; the first of these the CPU has names its units.
X86_UNITS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
ARM_UNITS = {"bf16": "Arm BF16"}


@dataclass(frozen=True)
class Bf16Support:
    """The CPU's bf16 units (empty: none) and whether torch's kernels use them, with why."""

    units: tuple[str, ...]  # e.g. ("AMX-BF16", "AVX512-BF16"); () when the CPU has none
    kernels: bool  # torch's oneDNN has bf16 kernels for this CPU
    reason: str  # one line, for /models, the start-up log and `clipserve device`

    @property
    def usable(self) -> bool:
        """bf16 runs on units made for it, so faster than fp32, not emulated and slower."""
        return bool(self.units) and self.kernels


def units_in(cpuinfo: str) -> tuple[str, ...]:
    """The bf16 units /proc/cpuinfo's flags (x86) or Features (Arm) list (pure, for tests)."""
    features: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            features |= set(value.split())
    return tuple(name for flag, name in (X86_UNITS | ARM_UNITS).items() if flag in features)


def judge(units: tuple[str, ...], kernels: bool, torch_version: str) -> Bf16Support:
    """The verdict from what was observed (pure, for tests)."""
    if not units:
        return Bf16Support(
            units,
            kernels,
            "this CPU has no bf16 units (no amx_bf16 or avx512_bf16 flag, no Arm bf16 "
            "feature): bf16 would be emulated, many times slower than fp32",
        )
    has = " and ".join(units)
    if not kernels:
        return Bf16Support(
            units,
            kernels,
            f"this CPU has {has}, but torch {torch_version}'s oneDNN has no bf16 kernels "
            "for it: bf16 would be emulated, many times slower than fp32",
        )
    return Bf16Support(units, kernels, f"this CPU has {has} and torch's oneDNN uses it")


def _torch_bf16_kernels() -> bool:
    """Whether torch's oneDNN (mkldnn) runs bf16 on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@functools.cache
def bf16_support() -> Bf16Support:
    """What this CPU offers for bf16, read once (the flags cannot change while we run)."""
    try:
        cpuinfo = CPUINFO.read_text(encoding="ascii", errors="replace")
    except OSError:  # not Linux, or /proc hidden: claim nothing
        cpuinfo = ""
    return judge(units_in(cpuinfo), _torch_bf16_kernels(), torch.__version__)
