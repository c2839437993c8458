"""Clean-up worker processes of one vectorization, in the order their batches were formed."""

from __future__ import annotations

import collections
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from geoseg.errors import (
    GeosegError,
)
from geoseg.pipeline.measure import clean_and_measure

log = logging.getLogger(__name__)

#: Most clean-up processes of one vectorization.
MAX_CLEANUP_WORKERS = 8


def default_cleanup_workers() -> int:
    """Clean-up processes the CLI asks for: one per usable core, up to 8."""
    from geoseg.infer.backends import default_threads

    return max(1, min(default_threads(), MAX_CLEANUP_WORKERS))


def _usable_cleanup_workers(requested: int | None) -> int:
    """``requested`` (default 1), or 1 in a daemonic process, which may not start children."""
    import multiprocessing

    n = requested or 1
    if n > 1 and multiprocessing.current_process().daemon:
        log.info(
            "clean-up in this process: a daemonic process (a dask worker) may not start others"
        )
        return 1
    return n


class _Cleaner:
    """Clean batches of polygons in worker processes, handing results back in submission order.

    The first full batch is cleaned in the caller and the pool starts only when
    a second full one comes, so a raster with few polygons never starts
    processes; at most ``2 * workers`` batches are in flight, which bounds
    memory.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Any = None
        self._submitted = 0
        self._queue: collections.deque[tuple[Any, Any]] = collections.deque()

    def submit(self, key: Any, *args: Any, full: bool = True) -> list[tuple[Any, Any]]:
        """Queue ``clean_and_measure(*args)``; return the results now due, oldest first.

        ``full``: a whole batch (the raster goes on); the pool starts at the
        second one, never for the short batches flushed at the end.
        """
        if self.workers > 1 and self._pool is None and full and self._submitted:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # forkserver: a clean process, not a fork of this multi-threaded one (GDAL).
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("forkserver")
            )
        if self._pool is None:
            self._queue.append((key, _Done(clean_and_measure(*args))))
        else:
            self._queue.append((key, self._pool.submit(clean_and_measure, *args)))
        self._submitted += full
        due = []
        while self._queue and (len(self._queue) > 2 * self.workers or self._queue[0][1].done()):
            k, fut = self._queue.popleft()
            due.append((k, _result(fut)))
        return due

    def drain(self) -> list[tuple[Any, Any]]:
        """Every remaining result, in submission order."""
        due = [(k, _result(fut)) for k, fut in self._queue]
        self._queue.clear()
        return due

    def close(self, *, wait: bool = True) -> None:
        """Stop the pool; after a failure (``wait=False``) kill the workers mid-batch too.

        ``shutdown(cancel_futures=True)`` only cancels batches not yet started, and
        the interpreter would wait at exit for those running: an interrupted or
        failed run must not hang for the longest batch in flight.
        """
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if not wait:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    proc.terminate()
        pool.shutdown(wait=wait, cancel_futures=True)


def _result(fut: Any) -> Any:
    """A clean-up result; a worker that died (killed for memory?) is one clear error."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fut.result()
    except BrokenProcessPool as exc:
        raise GeosegError(
            "a clean-up worker process died (out of memory?); rerun with one clean-up worker "
            "(VectorizeConfig.workers or PredictConfig.vectorize_workers set to 1; "
            "geoseg vectorize --cleanup-workers 1)"
        ) from exc


@dataclass(frozen=True)
class _Done:
    """A result computed in the caller, shaped like a finished future."""

    value: Any

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        return self.value
