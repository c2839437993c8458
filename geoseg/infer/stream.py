"""The streaming inference loop: tiles in, finished class strips out.

Three stages run at once, connected by bounded queues, so the network never
waits for the work around it:

1. reader threads read and normalise tiles ahead of the network (one by
   default; more for a fast GPU), each with its own dataset handle, taking
   tiles in turn so the order never changes;
2. an inference thread batches them through the predictor;
3. the calling thread blends the probabilities
   (:class:`~geoseg.infer.blend.StreamingBlender`, or
   :class:`~geoseg.infer.blend.TorchBlender` on the GPU) and yields finished
   strips top to bottom as soon as no later tile can touch them, while the
   network already runs the next batch.

numpy, ONNX Runtime and PyTorch release the GIL in their kernels, so the
stages overlap on a multi-core CPU as well as between CPU and GPU.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoseg.infer.blend import BlendedBlock, StreamingBlender
from geoseg.types import CLASS_NODATA, PROB_NODATA, PROB_SCALE, PixelWindow, Strip, Tile, TileGrid

ReadFn = Callable[[PixelWindow], tuple[np.ndarray, np.ndarray]]
NormalizeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
PredictFn = Callable[[np.ndarray], Any]
ProgressFn = Callable[[int, int], None]


@dataclass
class StreamStats:
    """Counters filled while a stream runs."""

    tiles: int = 0
    skipped_tiles: int = 0
    valid_pixels: int = 0


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()
_POLL_S = 0.1

__all__ = ["CLASS_NODATA", "PROB_NODATA", "PROB_SCALE", "StreamStats", "Strip", "stream_segment"]


def _put(q: queue.Queue[object], item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; False when stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue[object], stop: threading.Event) -> object:
    """Next item of ``q``, or ``_DONE`` once ``stop`` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            continue
    return _DONE


def _reader(
    tiles: Iterable[Tile],
    read: ReadFn,
    normalize: NormalizeFn,
    out: queue.Queue[object],
    stop: threading.Event,
) -> None:
    try:
        for tile in tiles:
            if stop.is_set():
                return
            data, valid = read(tile.window)
            x = normalize(data, valid) if valid.any() else None
            if not _put(out, (tile, x, valid), stop):
                return
        _put(out, _DONE, stop)
    except BaseException as exc:  # handed to the consumer thread, which re-raises it
        _put(out, _Failure(exc), stop)


def _infer(
    total: int,
    inputs: list[queue.Queue[object]],
    predict: PredictFn,
    batch_size: int,
    workers: int,
    out: queue.Queue[object],
    stop: threading.Event,
) -> None:
    """Take tiles from the reader queues in grid order, run batches, pass results on.

    Up to ``workers`` batches run at once in a thread pool; their futures go
    to ``out`` in grid order, so the consumer blends them in order whichever
    finishes first.  ``out`` being bounded keeps the batches in flight bounded.
    """
    pending: list[tuple[Tile, np.ndarray | None, np.ndarray]] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geoseg-net")

    def flush() -> bool:
        xs = [x for _, x, _ in pending if x is not None]
        # One tile (batch 1, the CPU default) goes as a view: no copy between reader and model.
        batch_x = xs[0][None] if len(xs) == 1 else np.stack(xs) if xs else None
        fut: Future[Any] | None = pool.submit(predict, batch_x) if batch_x is not None else None
        batch = [(tile, x is not None, valid) for tile, x, valid in pending]
        pending.clear()
        return _put(out, (batch, fut), stop)

    try:
        n_valid = 0
        for i in range(total):
            item = _get(inputs[i % len(inputs)], stop)
            if item is _DONE:
                if stop.is_set():
                    return
                raise RuntimeError("a tile reader ended before the grid did")
            if isinstance(item, _Failure):
                _put(out, item, stop)
                return
            assert isinstance(item, tuple)
            pending.append(item)
            n_valid += item[1] is not None
            # Long runs of all-nodata tiles are flushed too, so pending stays small.
            if n_valid >= batch_size or len(pending) >= 8 * batch_size:
                if not flush():
                    return
                n_valid = 0
        if pending and not flush():
            return
        _put(out, _DONE, stop)
    except BaseException as exc:  # handed to the consumer thread, which re-raises it
        _put(out, _Failure(exc), stop)
    finally:
        # Submitted batches run to the end; once stopped, those not started yet are dropped.
        pool.shutdown(wait=True, cancel_futures=stop.is_set())


class _StripAssembler:
    def __init__(self, grid: TileGrid, n_classes: int, probs: bool, exact: bool) -> None:
        self.grid = grid
        self.n_classes = n_classes
        self.want_probs = probs
        self.want_exact = exact
        self._row_off = -1

    def _new(self, row_off: int, rows: int) -> None:
        w = self.grid.width
        self._row_off = row_off
        self._classes = np.full((rows, w), CLASS_NODATA, dtype=np.uint8)
        self._probs = (
            np.full((self.n_classes, rows, w), PROB_NODATA, dtype=np.uint8)
            if self.want_probs
            else None
        )
        self._exact = np.zeros((self.n_classes, rows, w), np.float32) if self.want_exact else None

    def add(self, block: BlendedBlock) -> Strip | None:
        rows, cols = block.covered.shape
        if block.row_off != self._row_off:
            self._new(block.row_off, rows)
        c0, c1 = block.col_off, block.col_off + cols
        self._classes[:, c0:c1] = block.classes
        if self._probs is not None:
            assert block.probs is not None
            p = np.rint(block.probs * PROB_SCALE).astype(np.uint8)
            p[:, ~block.covered] = PROB_NODATA
            self._probs[:, :, c0:c1] = p
        if self._exact is not None:
            assert block.probs is not None
            self._exact[:, :, c0:c1] = block.probs
        if c1 < self.grid.width:
            return None
        self._row_off = -1
        return Strip(block.row_off, self._classes, self._probs, self._exact)


def stream_segment(
    grid: TileGrid,
    read: ReadFn | Sequence[ReadFn],
    normalize: NormalizeFn,
    predict: PredictFn,
    n_classes: int,
    *,
    batch_size: int = 2,
    probabilities: bool = False,
    exact_probabilities: bool = False,
    margin: int | None = None,
    prefetch: int = 2,
    progress: ProgressFn | None = None,
    stats: StreamStats | None = None,
    blend_device: Any = None,
    workers: int = 1,
    contact_class: int | None = None,
) -> Iterator[Strip]:
    """Segment a raster tile by tile and yield finished strips top to bottom.

    Parameters
    ----------
    grid : TileGrid
        Tiles to run (see :func:`geoseg.tiling.make_grid`).
    read : callable or sequence of callables
        ``read(window) -> (data, valid)``, e.g. :meth:`geoseg.io.read.RasterSource.read`.
        One reader thread per callable, each calling only its own (so each may
        hold its own dataset handle: GDAL handles are not thread-safe); tiles
        are dealt to them in turn and taken back in the same order.
    normalize : callable
        ``normalize(data, valid) -> float32 array`` fed to the network; runs in
        the reader threads.
    predict : callable
        ``predict(batch (N, bands, H, W)) -> probabilities (N, classes, H, W)``,
        a numpy array, or a torch tensor on ``blend_device``.  It runs in its
        own thread(s): see ``workers``.
    n_classes : int
        Number of classes ``predict`` returns (before the contact output, if any).
    batch_size : int
        Tiles per ``predict`` call.
    probabilities, exact_probabilities : bool
        Also return uint8-scaled / float32 blended probabilities per strip.
    margin : int, optional
        Zero-weight margin of the blending window (default ``overlap // 4``).
    prefetch : int
        Batches each stage may run ahead of the next.
    progress : callable, optional
        ``progress(tiles_done, tiles_total)`` after each batch is blended.
    stats : StreamStats, optional
        Filled with tile and pixel counters.
    blend_device : torch.device or str, optional
        Blend on this torch device (:class:`~geoseg.infer.blend.TorchBlender`),
        for a ``predict`` that leaves its output there; default: numpy on the
        host.
    workers : int
        ``predict`` calls that may run at once, from different threads (it must
        be thread-safe when above 1; see
        :attr:`geoseg.infer.predictor.Predictor.workers`).
    contact_class : int, optional
        ``predict`` returns one more channel, the contact output of a model
        that separates touching objects of this class (see
        :class:`~geoseg.infer.blend.StreamingBlender`).

    Yields
    ------
    Strip
        Consecutive strips that together cover every raster row once.
    """
    stats = stats if stats is not None else StreamStats()
    want_probs = probabilities or exact_probabilities
    blender: StreamingBlender
    if blend_device is not None:
        from geoseg.infer.blend import TorchBlender

        blender = TorchBlender(
            grid,
            n_classes,
            device=blend_device,
            margin=margin,
            probabilities=want_probs,
            contact_class=contact_class,
        )
    else:
        blender = StreamingBlender(
            grid,
            n_classes,
            margin=margin,
            probabilities=want_probs,
            contact_class=contact_class,
        )
    assembler = _StripAssembler(grid, n_classes, probabilities, exact_probabilities)
    reads = [read] if callable(read) else list(read)
    if not reads:
        raise ValueError("stream_segment needs at least one read function")
    total = len(grid)
    stop = threading.Event()
    depth = max(1, prefetch * batch_size)
    in_qs: list[queue.Queue[object]] = [
        queue.Queue(maxsize=max(1, -(-depth // len(reads)))) for _ in reads
    ]
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    # Batches in flight: one per worker running plus ``prefetch`` finished, waiting.
    out_q: queue.Queue[object] = queue.Queue(maxsize=workers + max(0, prefetch - 1))
    threads = [
        threading.Thread(
            target=_reader,
            args=(itertools.islice(grid, k, None, len(reads)), fn, normalize, in_qs[k], stop),
            name=f"geoseg-reader-{k}",
            daemon=True,
        )
        for k, fn in enumerate(reads)
    ]
    threads.append(
        threading.Thread(
            target=_infer,
            args=(total, in_qs, predict, batch_size, workers, out_q, stop),
            name="geoseg-infer",
            daemon=True,
        )
    )
    for t in threads:
        t.start()
    done = 0
    try:
        while True:
            item = out_q.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.exc
            assert isinstance(item, tuple)
            batch, fut = item
            results = iter(fut.result()) if fut is not None else iter(())
            for tile, has_data, valid in batch:
                probs = next(results) if has_data else None
                stats.tiles += 1
                if probs is None:
                    stats.skipped_tiles += 1
                for block in blender.add(tile, probs, valid):
                    strip = assembler.add(block)
                    if strip is not None:
                        stats.valid_pixels += int(np.count_nonzero(strip.classes != CLASS_NODATA))
                        yield strip
            done += len(batch)
            if progress is not None:
                progress(done, total)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
