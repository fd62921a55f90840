"""Which precision a device computes fast, and what machine a figure was measured on.

bf16 autocast is only a speed-up where the device has bf16 arithmetic: CUDA GPUs from Ampere on, CPUs with
AVX512-BF16 or AMX. Elsewhere torch emulates it (seen: 14x slower than fp32 on an AMD Zen 2), so `auto` picks
bf16 only where it is native, and an explicit `bf16` on such a device runs with a warning. The rule is decided
on the machine that holds the device (inside the actor), not on the driver's.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Literal

Precision = Literal["auto", "bf16", "fp32"]
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpuinfo(field: str) -> str | None:
    """The first `field : value` line of /proc/cpuinfo (Linux), or None."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> set[str]:
    return set((cpuinfo("flags") or cpuinfo("Features") or "").split())  # x86 / aarch64


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def native_bf16(device: str = "cpu") -> bool:
    """Does `device` ("cpu" or "cuda") compute bf16 in hardware?"""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if platform.machine() in ("aarch64", "arm64"):
        return "bf16" in cpu_flags()  # Arm's BF16 extension (Graviton 3, Neoverse V1 and later)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def device_name(device: str = "cpu") -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    flags = [f for f in CPU_FLAGS if f in cpu_flags()]
    return f"{cpu_model()} ({', '.join(flags) or 'no avx2'})"


def resolve_precision(requested: Precision, device: str = "cpu") -> dict:
    """Training precision: {"requested", "used", "native_bf16", "device", "reason", "warning"}."""
    native = native_bf16(device)
    used = ("bf16" if native else "fp32") if requested == "auto" else requested
    reason = "as asked" if requested != "auto" else ("auto: native bf16" if native else "auto: no native bf16")
    warning = None
    if used == "bf16" and not native:
        warning = (f"mixed_precision bf16 on {device_name(device)}: this device has no bf16 arithmetic, torch "
                   "emulates it (many times slower than fp32); use mixed_precision: auto or fp32")
    return {"requested": requested, "used": used, "native_bf16": native, "device": device_name(device),
            "reason": reason, "warning": warning}


def engine_precision(device: str = "cpu") -> dict:
    """Inference engines (rollout, eval) hold their weights in one dtype, with no fp32 master copy: bf16 on a
    GPU that computes it natively, else fp32. CPUs stay fp32: bf16 weights would round what bf16 autocast
    keeps exact, and the CPU-sized models generate no faster in bf16."""
    info = resolve_precision("auto", device)
    if not device.startswith("cuda") and info["used"] == "bf16":
        info.update(used="fp32", reason="auto: fp32 weights on CPU")
    return info


def describe(precision: dict) -> str:
    """`bf16 (auto: native bf16) on AMD EPYC (avx2, avx512f, avx512_bf16)`, for a stage's first lines."""
    return f"{precision['used']} ({precision['reason']}) on {precision['device']}"


def machine_info(threads: int | None = None) -> dict:
    """What every benchmark result records: processor, its relevant instruction sets, torch and threads.
    (Reads torch's version without importing it: the verifier benchmark runs without torch.)"""
    import sys
    from importlib.metadata import version

    flags = cpu_flags()
    info = {
        "processor": cpu_model(),
        "instruction_sets": {f: f in flags for f in CPU_FLAGS},
        "cpus": os.cpu_count(),
        "threads": threads,
        "torch": version("torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(info: dict) -> str:
    """One line for a results table: `AMD EPYC (avx2, avx512f, avx512_bf16); torch 2.13.0; 2 threads`."""
    sets = [k for k, v in info["instruction_sets"].items() if v]
    gpu = f"; GPU {info['gpu']}" if "gpu" in info else ""
    return (f"{info['processor']} ({', '.join(sets) or 'no avx2'}){gpu}; torch {info['torch']}; "
            f"{info['threads']} threads")
