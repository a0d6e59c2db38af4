"""Process helpers: returning freed heap to the system after a graph compile."""
import ctypes
import sys

import pytest

from res2net_ms.process import release_free_memory


def _resident_bytes():
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_goes_back_to_the_system():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(1024) for _ in range(150_000)]
    for b in blocks:
        ctypes.memset(b, 1, 1024)
    fence = libc.malloc(1024)  # stays allocated above the freed blocks: free() cannot trim
    for b in blocks:
        libc.free(b)
    before = _resident_bytes()
    assert release_free_memory()
    released = before - _resident_bytes()
    libc.free(fence)
    assert released > 100 * 2 ** 20, f"only {released / 2 ** 20:.0f} MiB returned"
