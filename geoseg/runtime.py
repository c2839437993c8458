"""Process-wide settings that applications (the CLI, benchmarks, workers) opt into."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3


def bound_malloc(threshold: int = 256 * 1024) -> bool:
    """Serve large allocations with mmap so freed tile buffers go back to the OS.

    glibc raises its mmap threshold dynamically after large frees; tile-sized
    numpy buffers allocated and freed in reader/writer threads then come from
    fragmenting heaps and the resident size creeps with the raster height.
    Pinning the threshold keeps a long run's memory flat.  Returns True when
    applied (glibc only; a no-op elsewhere).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        log.debug("mallopt unavailable; allocation behaviour unchanged")
        return False
