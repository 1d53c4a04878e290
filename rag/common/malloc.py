"""The C allocator's threshold for giving large blocks back to the system.

glibc serves a block of at least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and unmaps it
when freed. The threshold starts at 128 KiB but rises to the size of any such block that is freed
(up to 32 MiB), after which blocks that size come from the heap, which fragments and does not
shrink. A command that allocates and frees large blocks once per batch (passage texts, score
arrays) then grows with the number of batches it runs: ``eval-retrieval`` gained about 75 MiB
from 640 to 5,000 questions that way (docs/benchmarks.md, "Nothing lost"). Fixing the threshold
keeps it from rising.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def fix_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold at ``size`` bytes for this process; False where the C library
    is not glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, size) == 1)
