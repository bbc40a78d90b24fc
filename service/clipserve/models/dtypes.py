"""The dtype `--dtype` asks for, planned before any model loads (also for `clipserve device`).

On CUDA, `auto` is fp16. On a CPU, `auto` is bf16 where the CPU has bf16 units (cpu.py) and the
model passes a self-check against fp32 at start-up (models/precision.py), else fp32. bf16 on a
CPU means weights and inputs cast to bf16, not `torch.autocast` (3-4x slower than fp32 there).
An explicit bf16 on a CPU without bf16 units is refused: emulated, it runs many times slower
than fp32. fp32 stays for bit-exact work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipserve.models import cpu

DTYPES = ("auto", "fp32", "fp16", "bf16")


class DtypeError(Exception):
    """The dtype asked for cannot be used, or would be slow, on this device; says why."""


@dataclass(frozen=True)
class Plan:
    """The dtype to build in, why, and whether it becomes bf16 after the self-check."""

    precision: str  # fp32, fp16 or bf16
    reason: str
    check_bf16: bool = False  # auto on a CPU with bf16 units: built fp32, cast if faithful

    def describe(self) -> str:
        """One line: the dtype, or what decides it, and why."""
        if self.check_bf16:
            return f"bf16 if the start-up self-check agrees with fp32, else fp32 ({self.reason})"
        return f"{self.precision} ({self.reason})"


def plan(dtype: str, device: torch.device) -> Plan:
    """The dtype for `--dtype` on `device`; DtypeError where it is unusable or would be slow."""
    if dtype not in DTYPES:
        raise DtypeError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if device.type != "cpu":
        if dtype == "auto":
            return Plan("fp16", f"auto on {device.type}")
        return Plan(dtype, f"--dtype {dtype}")
    if dtype == "fp32":
        return Plan("fp32", "--dtype fp32")
    if dtype == "fp16":
        raise DtypeError("dtype fp16 is not supported on CPU; use auto, fp32 or bf16")
    support = cpu.bf16_support()
    if dtype == "bf16":
        if not support.usable:
            raise DtypeError(f"dtype bf16 refused: {support.reason}; use --dtype fp32 or auto")
        return Plan("bf16", f"--dtype bf16; {support.reason}")
    if not support.usable:
        return Plan("fp32", f"auto on cpu: {support.reason}")
    return Plan("fp32", f"auto on cpu: {support.reason}", check_bf16=True)
