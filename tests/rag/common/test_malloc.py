"""glibc's mmap threshold, fixed: a 1 MiB block freed after an 8 MiB one still comes from its own
mmap (given back when freed) instead of the heap that the raised threshold would give it."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

PROBE = """
import ctypes, ctypes.util, sys
from rag.common.malloc import fix_mmap_threshold
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
libc.free(libc.malloc(8 << 20))  # glibc's dynamic threshold rises to 8 MiB here
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not ctypes.util.find_library("c"),
                    reason="glibc only")
def test_a_large_block_stays_mmapped_after_a_larger_one_was_freed():
    def mmapped(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True)
        if "mallinfo2" in done.stderr:
            pytest.skip("a C library without mallinfo2")
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    assert mmapped("default") == 0  # from the heap: what grew eval-retrieval's memory
    assert mmapped("fixed") == 1
