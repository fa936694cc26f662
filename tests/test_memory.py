"""keep_freed_memory: the memory a step frees stays in the process for the next step, not the kernel."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A fresh process (the setting is process-wide and cannot be undone) fills ten 8 MB tensors and frees them
# all, as a training step does with its activations, and prints how much of that memory it still holds
# (resident set size, MB). Whatever glibc gives back to the kernel, the next step faults in again.
STEP = """
import os, sys, torch
from NLM.min_lm.training.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
torch.empty(1).fill_(0)
before = resident_mb()
activations = [torch.empty(2 * 1024 * 1024).fill_(1.0) for _ in range(10)]
del activations
print(resident_mb() - before)
"""


def held_after_a_step(mode: str) -> float:
    result = subprocess.run([sys.executable, "-c", STEP, mode], capture_output=True, text=True, check=True)
    return float(result.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt's thresholds are a glibc feature")
def test_a_steps_freed_activations_stay_in_the_process():
    assert held_after_a_step("default") < 20  # glibc's default trims the 80 MB freed at the top of its heap
    assert held_after_a_step("keep") > 70  # kept for the next step to reuse


@pytest.mark.skipif(GLIBC, reason="only where there is no glibc")
def test_without_glibc_the_allocator_is_left_alone():
    from NLM.min_lm.training.memory import keep_freed_memory
    assert keep_freed_memory() is False
