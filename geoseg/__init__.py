"""geoseg: segment very large GeoTIFFs into GIS-ready maps of buildings, vegetation and cropland.

The data flows one way: read -> tile -> infer + blend -> write raster -> vectorize
-> write GeoPackage.  Importing this package is cheap; heavy dependencies
(torch, dask) are imported by the modules that need them.
"""

from __future__ import annotations

import logging

from geoseg.errors import GeosegError, GeosegWarning

__version__ = "0.1.0"

__all__ = ["GeosegError", "GeosegWarning", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
