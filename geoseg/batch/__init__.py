"""Batch runs over many regions on a dask cluster, resumable and exact at region seams.

>>> from geoseg.batch import load_work, run_batch  # doctest: +SKIP
>>> result = run_batch(load_work("regions.yaml"), "out/", workers=2)  # doctest: +SKIP

A work file lists many rasters, or cuts one raster (or VRT mosaic) into a grid
of regions or into the windows of AOI polygons (:mod:`geoseg.batch.work`).
Each region is one task running :func:`geoseg.pipeline.run_scene` on a worker
of a local cluster or of a running scheduler (:mod:`geoseg.batch.cluster`);
the same task vectorizes its region (:mod:`geoseg.batch.vector`: finished
polygons cleaned on the worker, polygons cut by region borders kept apart).
Finished regions are recorded in a manifest with checksums
(:mod:`geoseg.batch.manifest`), so ``resume=True`` recomputes only what is
missing or changed; the merge (:mod:`geoseg.batch.merge`) builds a VRT mosaic
of the region COGs, joins the polygons cut by region borders and writes one
GeoPackage identical to a single run over the raster.
"""

from geoseg.batch.cluster import ClusterInfo, LocalLayout, local_layout, open_client
from geoseg.batch.manifest import Manifest, ManifestState, OutputFile
from geoseg.batch.run import (
    MOSAIC_NAME,
    POLYGONS_NAME,
    REGIONS_DIR,
    BatchError,
    BatchProgressFn,
    BatchResult,
    run_batch,
)
from geoseg.batch.work import Region, WorkSpec, load_work, plan_regions, work_from_dict
from geoseg.batch.worker import cached_model

__all__ = [
    "MOSAIC_NAME",
    "POLYGONS_NAME",
    "REGIONS_DIR",
    "BatchError",
    "BatchProgressFn",
    "BatchResult",
    "ClusterInfo",
    "LocalLayout",
    "Manifest",
    "ManifestState",
    "OutputFile",
    "Region",
    "WorkSpec",
    "cached_model",
    "load_work",
    "local_layout",
    "open_client",
    "plan_regions",
    "run_batch",
    "work_from_dict",
]
