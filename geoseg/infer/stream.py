"""The streaming inference loop: tiles in, finished class strips out.

A reader thread reads and normalises tiles ahead of the network (so the
device does not wait on disk); the calling thread batches them through the
predictor and the :class:`~geoseg.infer.blend.StreamingBlender`; finished
strips are yielded top to bottom as soon as no later tile can touch them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from geoseg.infer.blend import BlendedBlock, StreamingBlender
from geoseg.types import PixelWindow, Tile, TileGrid

CLASS_NODATA = 255
PROB_NODATA = 255
PROB_SCALE = 254

ReadFn = Callable[[PixelWindow], tuple[np.ndarray, np.ndarray]]
NormalizeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
PredictFn = Callable[[np.ndarray], np.ndarray]
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Strip:
    """Finished output rows ``row_off .. row_off + rows`` over the full raster width.

    ``classes`` is uint8 ``(rows, width)`` with :data:`CLASS_NODATA` where no valid
    input pixel was; ``probs`` (when requested) is uint8 ``(classes, rows, width)``
    holding ``round(p * 254)`` and :data:`PROB_NODATA` on nodata;
    ``probs_f32`` (when requested) keeps the float probabilities for tests
    and callers that need them exactly.
    """

    row_off: int
    classes: np.ndarray
    probs: np.ndarray | None = None
    probs_f32: np.ndarray | None = None


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


def _reader(
    grid: TileGrid,
    read: ReadFn,
    normalize: NormalizeFn,
    out: queue.Queue[object],
    stop: threading.Event,
) -> None:
    try:
        for tile in grid:
            if stop.is_set():
                return
            data, valid = read(tile.window)
            x = normalize(data, valid) if valid.any() else None
            while not stop.is_set():
                try:
                    out.put((tile, x, valid), timeout=0.1)
                    break
                except queue.Full:
                    continue
        out.put(_DONE)
    except BaseException as exc:  # handed to the consumer thread, which re-raises it
        out.put(_Failure(exc))


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
        cls = np.argmax(block.probs, axis=0).astype(np.uint8)
        cls[~block.covered] = CLASS_NODATA
        self._classes[:, c0:c1] = cls
        if self._probs is not None:
            p = np.rint(block.probs * PROB_SCALE).astype(np.uint8)
            p[:, ~block.covered] = PROB_NODATA
            self._probs[:, :, c0:c1] = p
        if self._exact is not None:
            self._exact[:, :, c0:c1] = block.probs
        if c1 < self.grid.width:
            return None
        self._row_off = -1
        return Strip(block.row_off, self._classes, self._probs, self._exact)


def stream_segment(
    grid: TileGrid,
    read: ReadFn,
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
) -> Iterator[Strip]:
    """Segment a raster tile by tile and yield finished strips top to bottom.

    Parameters
    ----------
    grid : TileGrid
        Tiles to run (see :func:`geoseg.tiling.make_grid`).
    read : callable
        ``read(window) -> (data, valid)``, e.g. :meth:`geoseg.io.read.RasterSource.read`.
        It runs in a background thread.
    normalize : callable
        ``normalize(data, valid) -> float32 array`` fed to the network.
    predict : callable
        ``predict(batch (N, bands, H, W)) -> probabilities (N, classes, H, W)``.
    n_classes : int
        Number of classes ``predict`` returns.
    batch_size : int
        Tiles per ``predict`` call.
    probabilities, exact_probabilities : bool
        Also return uint8-scaled / float32 blended probabilities per strip.
    margin : int, optional
        Zero-weight margin of the blending window (default ``overlap // 4``).
    prefetch : int
        Batches the reader may run ahead.
    progress : callable, optional
        ``progress(tiles_done, tiles_total)`` after each batch.
    stats : StreamStats, optional
        Filled with tile and pixel counters.

    Yields
    ------
    Strip
        Consecutive strips that together cover every raster row once.
    """
    stats = stats if stats is not None else StreamStats()
    blender = StreamingBlender(grid, n_classes, margin=margin)
    assembler = _StripAssembler(grid, n_classes, probabilities, exact_probabilities)
    q: queue.Queue[object] = queue.Queue(maxsize=max(1, prefetch * batch_size))
    stop = threading.Event()
    thread = threading.Thread(
        target=_reader, args=(grid, read, normalize, q, stop), name="geoseg-reader", daemon=True
    )
    thread.start()
    total = len(grid)
    done = 0
    pending: list[tuple[Tile, np.ndarray | None, np.ndarray]] = []

    def flush() -> Iterator[Strip]:
        nonlocal done
        xs = [x for _, x, _ in pending if x is not None]
        results = iter(predict(np.stack(xs))) if xs else iter(())
        for tile, x, valid in pending:
            probs = next(results) if x is not None else None
            stats.tiles += 1
            if x is None:
                stats.skipped_tiles += 1
            for block in blender.add(tile, probs, valid):
                strip = assembler.add(block)
                if strip is not None:
                    stats.valid_pixels += int(np.count_nonzero(strip.classes != CLASS_NODATA))
                    yield strip
        done += len(pending)
        pending.clear()
        if progress is not None:
            progress(done, total)

    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.exc
            assert isinstance(item, tuple)
            pending.append(item)
            # Long runs of all-nodata tiles are flushed too, so pending stays small.
            if len(pending) >= 8 * batch_size or (
                sum(1 for _, x, _ in pending if x is not None) >= batch_size
            ):
                yield from flush()
        yield from flush()
    finally:
        stop.set()
        thread.join(timeout=10)
