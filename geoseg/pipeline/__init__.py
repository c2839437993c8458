"""One scene, end to end: the raster and vector stages every front end shares.

The CLI, the Python API (:mod:`geoseg.api`), batch workers, the demo and the xarray
accessor all run these functions; the package is split by job:

* :mod:`geoseg.pipeline.predict` -- the raster stage: :func:`run_scene` is
  :func:`plan_scene` (every check before any work: georeferencing, outputs, model card,
  bands, pixel size) then :func:`execute_scene` (the network runner of
  :func:`make_predictor`, streamed over the raster, written as a class COG on the input's
  exact grid);
* :mod:`geoseg.pipeline.vectorize` -- the vector stage: :func:`run_vectorize`
  polygonizes a class raster strip by strip into a styled GeoPackage;
* :mod:`geoseg.pipeline.pool` -- the clean-up worker processes of one vectorization;
* :mod:`geoseg.pipeline.measure` -- clean-up and geodesic measurement of one batch of
  polygons (what those workers run).

Every name is re-exported here, so ``from geoseg.pipeline import run_scene`` keeps
working.
"""

from __future__ import annotations

from geoseg.pipeline.measure import (
    ZONE_SPAN_DEG,
    clean_and_measure,
    cleanup_for,
    shapely_total_bounds,
)
from geoseg.pipeline.pool import (
    MAX_CLEANUP_WORKERS,
    _Cleaner,
    _result,
    _usable_cleanup_workers,
    default_cleanup_workers,
)
from geoseg.pipeline.predict import (
    MAX_READERS,
    MAX_UPSAMPLE,
    RESAMPLE_TOLERANCE,
    PredictConfig,
    ProgressFn,
    RunStats,
    ScenePlan,
    _BackgroundWriter,
    check_dtype,
    check_georeference,
    check_upsampling,
    crop_strips,
    default_readers,
    execute_scene,
    make_predictor,
    model_window,
    parse_bands,
    parse_range,
    peak_rss_mb,
    plan_scene,
    run_scene,
)
from geoseg.pipeline.vectorize import VectorizeConfig, VectorStats, run_vectorize

__all__ = [
    "MAX_CLEANUP_WORKERS",
    "MAX_READERS",
    "MAX_UPSAMPLE",
    "RESAMPLE_TOLERANCE",
    "ZONE_SPAN_DEG",
    "PredictConfig",
    "ProgressFn",
    "RunStats",
    "ScenePlan",
    "VectorStats",
    "VectorizeConfig",
    "_BackgroundWriter",
    "_Cleaner",
    "_result",
    "_usable_cleanup_workers",
    "check_dtype",
    "check_georeference",
    "check_upsampling",
    "clean_and_measure",
    "cleanup_for",
    "crop_strips",
    "default_cleanup_workers",
    "default_readers",
    "execute_scene",
    "make_predictor",
    "model_window",
    "parse_bands",
    "parse_range",
    "peak_rss_mb",
    "plan_scene",
    "run_scene",
    "run_vectorize",
    "shapely_total_bounds",
]
