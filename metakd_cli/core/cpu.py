"""The CPU this runs on: model name, the instruction-set flags that matter for int8, the int8 format.

Recorded in every metrics file that holds a speed or int8 accuracy figure, because int8
results differ between CPUs with and without VNNI.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

ARM_MACHINES = ("arm64", "aarch64", "armv8l", "armv8b")
INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8", "asimd",
              "asimddp", "i8mm")
TARGET_NEEDS = {"avx512_vnni": "avx512_vnni", "avx2": "avx2", "arm64": None}


@dataclass
class CpuInfo:
    model: str
    machine: str
    cores: int
    flags: list[str] = field(default_factory=list)  # the int8-relevant subset

    def to_json(self) -> dict:
        return asdict(self)


def cpu_info(cpuinfo: str | None = None, machine: str | None = None) -> CpuInfo:
    """Read /proc/cpuinfo (or the given text) for the model name and int8-relevant flags."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or "unknown", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "CPU part") and model in ("unknown", "", machine):
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return CpuInfo(model=model or "unknown", machine=machine, cores=os.cpu_count() or 1,
                   flags=[f for f in INT8_FLAGS if f in flags])


def int8_target(info: CpuInfo) -> tuple[str, str]:
    """The dynamic-int8 format for this CPU and why: arm64 on ARM, avx512_vnni with VNNI, else avx2."""
    if info.machine in ARM_MACHINES or info.machine.startswith("arm"):
        return "arm64", f"{info.machine} machine"
    if "avx512_vnni" in info.flags:
        return "avx512_vnni", "the CPU has avx512_vnni"
    return "avx2", "the CPU lacks avx512_vnni"


def target_mismatch(target: str | None, info: CpuInfo) -> str | None:
    """A warning when an int8 model made for ``target`` runs on a CPU without that feature."""
    needed = TARGET_NEEDS.get(target or "")
    arm = info.machine in ARM_MACHINES or info.machine.startswith("arm")
    if target == "arm64" and not arm:
        return "the int8 model was made for arm64 and is evaluated on an x86 CPU: its results may differ"
    if needed and (arm or needed not in info.flags):
        return (f"the int8 model was made for {target} but this CPU ({info.model}) lacks {needed}: "
                "int8 speed and accuracy can differ from the CPU it was made for")
    return None
