"""Freed memory back to the operating system between the phases of long work.

glibc's malloc keeps the heap pages of freed arrays below its mmap threshold,
and that threshold rises with every large array freed, so without help a
process's resident memory stays at the high-water mark of every phase before:
the scan's temporaries would still count while the selection is written.
`malloc_trim` hands free heap pages back; elsewhere this does nothing.
"""

from __future__ import annotations

import sys

_malloc_trim = None


def release_free_heap() -> None:
    """Return the free pages of the C heap to the OS (glibc); a no-op elsewhere."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = _find_malloc_trim()
    if _malloc_trim:
        _malloc_trim(0)


def _find_malloc_trim():
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return False
