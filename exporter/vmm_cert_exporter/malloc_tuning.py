"""glibc's allocator, told to give memory back.

Two of glibc's defaults make a long-running ``serve`` keep its peaks for good:
- a refresh runs dozens of threads, and glibc gives each an arena of its own (up to eight
  per core); memory freed in one arena is not reused by another;
- a freed block above the mmap threshold raises the threshold to its size (up to 32 MB), so
  that the next large buffers (a VMM server's TrustedPeople answer, a rendering of
  /metrics: megabytes each) come from the heap, where they fragment it, instead of from
  mmap, which hands them back whole when freed.
Two arenas, a fixed threshold and a trim after each snapshot keep ``serve`` near what it
holds. Elsewhere than glibc (musl, macOS) all three are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_MMAP_THRESHOLD = -3  # malloc.h
_M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 256 << 10  # bytes; setting it also ends glibc's raising it


def _libc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def limit_arenas(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Cap the number of arenas and fix the mmap threshold; call before the process starts
    its threads."""
    return (
        _LIBC is not None
        and bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))
        and bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    )


def trim() -> bool:
    """Hand freed pages of every arena back to the kernel (a few milliseconds)."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))
