"""Keep freed memory in the process, so a CPU training step does not map and unmap its buffers every time.

glibc serves a large allocation with a fresh mmap and gives it back to the kernel when it is freed (above a
threshold that adapts between 128 kB and 32 MB), and trims the top of its heap when enough is free there. A
training step allocates the same activations and gradients every iteration, so each step paid the kernel to
hand out zeroed pages again: on the default quickstart, 9% of the CPU time went to the kernel, most of it
in page faults. Fixing both thresholds keeps freed blocks in malloc's heap, where the next step reuses them.
The cost is that the process holds on to its peak memory until it exits, which a training run does anyway.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt's parameter numbers (glibc's malloc.h) and the largest mmap threshold it accepts on 64-bit
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LARGEST_MMAP_THRESHOLD = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed blocks rather than return them to the kernel: blocks up to 32 MB come from
    the heap, and the heap is never trimmed. True when it took effect; False without glibc (macOS, Windows,
    musl), where the allocator is left as it is."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mmap_set = mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)
    trim_set = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    return bool(mmap_set and trim_set)
