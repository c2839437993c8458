"""Vectorize class rasters: seam-exact polygonization and class-specific clean-up.

- :mod:`~geoseg.vectorize.polygonize`: strips of a class raster to polygons,
  identical to polygonizing the whole raster at once, in bounded memory;
- :mod:`~geoseg.vectorize.metric`: the metric CRS to measure and clean in;
- :mod:`~geoseg.vectorize.clean`: area filters, hole filling, smoothing,
  simplification and validity repair per class kind;
- :mod:`~geoseg.vectorize.regularize`: right-angled building footprints.
"""

from __future__ import annotations

from geoseg.vectorize.clean import (
    STYLES,
    CleanupParams,
    clean_geometries,
    default_cleanup,
    polygonal,
    smooth_polygon,
)
from geoseg.vectorize.metric import (
    MAX_SCALE_ERROR,
    MetricFrame,
    area_perimeter_m,
    from_metric,
    metric_crs,
    metric_frame,
    to_metric,
)
from geoseg.vectorize.polygonize import (
    DEFAULT_BLOCK_ROWS,
    PolygonRecord,
    polygonize_array,
    polygonize_strips,
)
from geoseg.vectorize.regularize import (
    dominant_direction,
    regularize_geometries,
    regularize_polygon,
)

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "MAX_SCALE_ERROR",
    "STYLES",
    "CleanupParams",
    "MetricFrame",
    "PolygonRecord",
    "area_perimeter_m",
    "clean_geometries",
    "default_cleanup",
    "dominant_direction",
    "from_metric",
    "metric_crs",
    "metric_frame",
    "polygonal",
    "polygonize_array",
    "polygonize_strips",
    "regularize_geometries",
    "regularize_polygon",
    "smooth_polygon",
    "to_metric",
]


from geoseg._callable import forward_calls

forward_calls(__name__, "vectorize")
