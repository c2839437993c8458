"""geoseg: segment very large GeoTIFFs into GIS-ready maps of buildings, vegetation and cropland.

The data flows one way: read -> tile -> infer + blend -> write raster -> vectorize
-> write GeoPackage.  Importing this package is cheap: the functions and classes
below load on first use (PEP 562), and heavy dependencies (torch, dask) are
imported by the modules that need them.

>>> import geoseg
>>> result = geoseg.predict("scene.tif", "scene.gpkg")    # doctest: +SKIP
>>> result.polygons, result.stats.mpx_per_s                 # doctest: +SKIP

Functions: :func:`predict`, :func:`vectorize`, :func:`evaluate`, :func:`train`,
:func:`load_model`, :func:`list_models` (see :mod:`geoseg.api`).  Configuration:
``PredictConfig``, ``VectorizeConfig``, ``EvalConfig``, ``TrainConfig``,
``CleanupParams``.  Every deliberate error derives from :class:`GeosegError`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from geoseg.errors import (
    AllNodataWarning,
    BandError,
    BatchError,
    CheckpointError,
    ConfigError,
    DeprecatedOptionWarning,
    GeoreferenceError,
    GeosegError,
    GeosegWarning,
    InterruptedRunError,
    MissingExtraError,
    ModelCardError,
    OutputExistsError,
    OutputWriteError,
    RasterReadError,
)

__version__ = "0.1.0"

#: Public names loaded on first use: name -> module.
_LAZY = {
    "predict": "geoseg.api",
    "vectorize": "geoseg.api",
    "evaluate": "geoseg.api",
    "train": "geoseg.api",
    "load_model": "geoseg.api",
    "list_models": "geoseg.api",
    "PredictResult": "geoseg.api",
    "PredictConfig": "geoseg.pipeline",
    "VectorizeConfig": "geoseg.pipeline",
    "RunStats": "geoseg.pipeline",
    "VectorStats": "geoseg.pipeline",
    "EvalConfig": "geoseg.evaluate",
    "TrainConfig": "geoseg.training.config",
    "CleanupParams": "geoseg.vectorize.clean",
    "ModelCard": "geoseg.models.card",
}

__all__ = [
    "AllNodataWarning",
    "DeprecatedOptionWarning",
    "BandError",
    "BatchError",
    "CheckpointError",
    "ConfigError",
    "GeoreferenceError",
    "GeosegError",
    "GeosegWarning",
    "InterruptedRunError",
    "MissingExtraError",
    "ModelCardError",
    "OutputExistsError",
    "OutputWriteError",
    "RasterReadError",
    "__version__",
    *_LAZY,
]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geoseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if name not in ("vectorize", "evaluate"):
        # (``geoseg.vectorize`` and ``geoseg.evaluate`` are also submodules, which the
        # import system sets as attributes of the package once imported; those modules
        # are callable and forward to the functions, so either object works.)
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
