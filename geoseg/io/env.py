"""GDAL configuration for geoseg's reads and writes.

GDAL's block cache defaults to 5 % of RAM and is filled by every block read or
written, so without a cap a run's memory would grow with the raster until
that limit.  geoseg caps it (64 MB unless ``GEOSEG_GDAL_CACHEMAX`` says
otherwise, in MB): enough to keep a band of 512-pixel blocks of a 30k-pixel
wide raster, so overlapping tiles do not decode blocks twice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import rasterio

DEFAULT_CACHE_MB = 64


def cache_mb() -> int:
    """The GDAL block cache size geoseg uses, in MB."""
    try:
        return max(1, int(os.environ.get("GEOSEG_GDAL_CACHEMAX", DEFAULT_CACHE_MB)))
    except ValueError:
        return DEFAULT_CACHE_MB


@contextmanager
def gdal_env() -> Iterator[None]:
    """Run the enclosed reads and writes under geoseg's GDAL settings."""
    with rasterio.Env(
        GDAL_CACHEMAX=cache_mb() * 1024 * 1024,
        CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif,.tiff,.vrt,.jp2,.img",
    ):
        yield


_PAM_GUARD = threading.RLock()


@contextmanager
def no_pam_sidecars() -> Iterator[None]:
    """Read vector files with pyogrio without leaving ``.aux.xml`` files beside them.

    pyogrio's GDAL (3.12) writes a PAM sidecar next to a GeoPackage that carries
    dataset metadata whenever it is opened read-only, so merely listing the layers
    of a file geoseg wrote would drop ``out.gpkg.aux.xml`` beside it.
    """
    import pyogrio

    with _PAM_GUARD:
        before = pyogrio.get_gdal_config_option("GDAL_PAM_ENABLED")
        pyogrio.set_gdal_config_options({"GDAL_PAM_ENABLED": "NO"})
        try:
            yield
        finally:
            pyogrio.set_gdal_config_options({"GDAL_PAM_ENABLED": before})
