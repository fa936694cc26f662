"""What `--compile auto` and `--dtype auto` pick on this machine, and why.

auto compiles on CUDA and on the CPU (torch.compile fuses the elementwise work between the matmuls and roughly
doubles CPU throughput) and computes in bfloat16 where the hardware has native bf16 arithmetic: every CUDA GPU
with bf16 (Ampere and later) and CPUs with AVX512-BF16 or AMX (or Arm's BF16 extension). Where compilation
cannot work (Apple's MPS, Windows, a CPU without a C++ compiler, CUDA without Triton) auto runs eagerly and
the header line says why. An explicit --compile / --no-compile or --dtype is always obeyed.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from pathlib import Path

import torch

# /proc/cpuinfo flags that mean the CPU multiplies bf16 natively (x86 AVX512-BF16 / AMX, Arm BF16)
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU flags list bf16 arithmetic; False where they cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return bool(_NATIVE_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def compile_blocker(device: torch.device) -> str | None:
    """Why torch.compile cannot run for `device` here, or None when it can."""
    if device.type == "mps":
        return "torch.compile does not support MPS training"
    if platform.system() == "Windows":
        return "torch.compile needs a compiler toolchain that Windows installs lack"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs Triton, which is not installed"
    has_compiler = os.environ.get("CXX") or any(map(shutil.which, ("g++", "clang++", "c++")))
    if device.type == "cpu" and not has_compiler:
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++), none found"
    return None


def resolve_compile(setting: bool | None, device: torch.device) -> tuple[bool, str | None]:
    """(compile?, a note for the user when auto falls back to eager)."""
    if setting is not None:
        return setting, None
    blocker = compile_blocker(device)
    if blocker is not None:
        return False, f"note: running eagerly: {blocker} (--compile auto)"
    return True, None


def resolve_dtype(setting: str, device: torch.device) -> str:
    """"auto" -> bfloat16 on CUDA GPUs and CPUs with native bf16, else float32; other values as given."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"
