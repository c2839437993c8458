"""Process-wide settings that applications (the CLI, benchmarks, workers) opt into."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
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


def passive_openmp() -> bool:
    """Let idle OpenMP workers sleep instead of spinning; call before torch is imported.

    libgomp's default (``OMP_WAIT_POLICY=ACTIVE``) keeps PyTorch's intra-op
    threads spinning between operators, taking the cores the tile reader, the
    blender and the COG writer need, and any other job's.  On a 2-core machine
    shared with other work, ``benchmarks/bench_backends.py`` measured PyTorch 1.7-3.2x
    faster model-only and 3-3.8x faster end to end with ``PASSIVE``; ONNX Runtime
    is unaffected.  An ``OMP_WAIT_POLICY`` already set wins.  Returns False when
    torch was already imported (libgomp reads the variable once, when it loads).
    """
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True
