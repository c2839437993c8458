"""Write class and probability rasters as Cloud-Optimized GeoTIFFs, atomically.

Strips arrive top to bottom and go into a tiled, lightly compressed GeoTIFF
under a hidden temporary name beside the output.  When every row is written
the GDAL COG driver copies it (internal overviews, DEFLATE, BigTIFF when
needed) to a second temporary name, which is renamed onto the final name.  A
failure or an interrupt at any point leaves no file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geoseg.errors import GeosegError, OutputWriteError
from geoseg.io.atomic import atomic_output, is_disk_full

CLASS_NODATA = 255
PROB_NODATA = 255
PROB_SCALE = 254


def _cog_options(resampling: str) -> dict[str, Any]:
    return {
        "driver": "COG",
        "compress": "DEFLATE",
        "predictor": "2" if resampling != "MODE" else "NO",
        "blocksize": 512,
        "overview_resampling": resampling,
        "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS",
    }


@contextmanager
def _staging(final: Path) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(
        prefix=f".{final.stem}.geoseg-part-", suffix=".tif", dir=final.parent
    )
    os.close(fd)
    try:
        yield Path(name)
    finally:
        for p in (Path(name), Path(name + ".aux.xml"), Path(name + ".ovr")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _write_error(path: Path, exc: BaseException) -> OutputWriteError:
    if is_disk_full(exc):
        return OutputWriteError(
            f"disk full (or file size limit reached) while writing {path}; free space on the disk "
            f"holding {path.parent} or choose another output directory"
        )
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # GDAL often reports a failed write without the errno; say what is likely.
    free = shutil.disk_usage(path.parent).free / 1e6 if path.parent.exists() else float("nan")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    hint = f"{free:,.0f} MB free on {path.parent}"
    if limit != resource.RLIM_INFINITY:
        hint += f", file size limit {limit:,} bytes"
    return OutputWriteError(
        f"failed writing {path} ({detail}); the disk may be full or a file size limit reached "
        f"({hint}); free space or choose another output directory"
    )


class RasterStripWriter:
    """Write a class raster (and optionally probabilities) strip by strip, then publish COGs.

    Parameters
    ----------
    path : Path
        Final class COG path.
    crs, transform, width, height
        Georeferencing of the output grid (copied from the input).
    colormap : mapping of int to (r, g, b)
        Colour table of band 1.
    class_names : sequence of str
        Names of classes, in id order (band descriptions and metadata).
    probabilities : Path, optional
        Final path of a uint8 probability COG with one band per class
        (``round(p * 254)``, 255 = nodata; the band scale is 1/254).
    overwrite : bool
        Replace existing outputs.
    tags : mapping, optional
        Dataset metadata (model name, version, ...).
    """

    def __init__(
        self,
        path: Path,
        *,
        crs: CRS | None,
        transform: Affine,
        width: int,
        height: int,
        colormap: Mapping[int, tuple[int, int, int]],
        class_names: Sequence[str],
        probabilities: Path | None = None,
        overwrite: bool = False,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.prob_path = Path(probabilities) if probabilities is not None else None
        self._stack = ExitStack()
        self._profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "crs": crs,
            "transform": transform,
            "tiled": True,
            "blockxsize": 512 if width >= 512 else 16 * max(1, -(-width // 16)),
            "blockysize": 512 if height >= 512 else 16 * max(1, -(-height // 16)),
            "compress": "LZW",
            "bigtiff": "IF_SAFER",
        }
        self._colormap = dict(colormap)
        self._names = list(class_names)
        self._tags = dict(tags or {})
        self._finals: list[tuple[Path, Path, str]] = []
        self._prob_ds: Any = None
        try:
            self._open(overwrite)
        except BaseException:
            self._stack.close()
            raise

    def _open(self, overwrite: bool) -> None:
        outputs = [(self.path, "MODE")]
        if self.prob_path is not None:
            outputs.append((self.prob_path, "AVERAGE"))
        for final, resampling in outputs:
            tmp_final = self._stack.enter_context(atomic_output(final, overwrite=overwrite))
            part = self._stack.enter_context(_staging(Path(final)))
            self._finals.append((part, tmp_final, resampling))
        try:
            self._cls_ds = self._stack.enter_context(
                rasterio.open(
                    self._finals[0][0],
                    "w",
                    **self._profile,
                    count=1,
                    dtype="uint8",
                    nodata=CLASS_NODATA,
                )
            )
            self._cls_ds.write_colormap(1, {k: (*v, 255) for k, v in self._colormap.items()})
            self._cls_ds.set_band_description(1, "class")
            self._cls_ds.update_tags(
                **self._tags, CLASS_NAMES=",".join(self._names), NODATA_CLASS=str(CLASS_NODATA)
            )
            if self.prob_path is not None:
                n = len(self._names)
                self._prob_ds = self._stack.enter_context(
                    rasterio.open(
                        self._finals[1][0],
                        "w",
                        **{**self._profile, "interleave": "band"},
                        count=n,
                        dtype="uint8",
                        nodata=PROB_NODATA,
                    )
                )
                for i, name in enumerate(self._names, start=1):
                    self._prob_ds.set_band_description(i, f"p({name})")
                self._prob_ds.scales = (1.0 / PROB_SCALE,) * n
                self._prob_ds.update_tags(**self._tags, CLASS_NAMES=",".join(self._names))
        except GeosegError:
            raise
        except Exception as exc:  # rasterio raises CPLE_* errors outside RasterioError
            raise _write_error(self.path, exc) from exc

    def write(self, row_off: int, classes: np.ndarray, probs: np.ndarray | None = None) -> None:
        """Write rows ``row_off .. row_off + len(classes)`` of the full width.

        ``classes`` is uint8 ``(rows, width)``; ``probs`` uint8 ``(classes, rows, width)``.
        """
        h, w = classes.shape
        win = Window(0, row_off, w, h)
        try:
            self._cls_ds.write(classes, 1, window=win)
            if self._prob_ds is not None and probs is not None:
                self._prob_ds.write(probs, window=win)
        except GeosegError:
            raise
        except Exception as exc:  # rasterio raises CPLE_* errors outside RasterioError
            raise _write_error(self.path, exc) from exc

    def commit(self) -> None:
        """Convert the staged GeoTIFFs to COGs and rename them onto the final names."""
        try:
            self._cls_ds.close()
            if self._prob_ds is not None:
                self._prob_ds.close()
            for part, tmp_final, resampling in self._finals:
                rasterio.shutil.copy(part, tmp_final, **_cog_options(resampling))
        except GeosegError as exc:
            self.abort(exc)
            raise
        except Exception as exc:  # rasterio raises CPLE_* errors outside RasterioError
            self.abort(exc)
            raise _write_error(self.path, exc) from exc
        self._stack.close()

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop every temporary file; nothing appears under the final names."""
        err = exc or RuntimeError("aborted")
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(err), err, err.__traceback__)

    def __enter__(self) -> RasterStripWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            self.commit()
        else:
            self.abort(exc)
