"""Label files read into class ids: label rasters through a value map, vector labels by attribute.

Shared by training (:mod:`geoseg.training.data`) and evaluation (:mod:`geoseg.evaluate`),
so evaluating a model reads labels without loading training code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import shapely

from geoseg.errors import ConfigError, GeoreferenceError
from geoseg.types import IGNORE_INDEX

__all__ = ["LabelLookup", "read_vector_labels"]

log = logging.getLogger(__name__)


class LabelLookup:
    """Maps label-raster values (or RGB colours) to class ids.

    Parameters
    ----------
    lookup : mapping
        Pixel value (int) or ``#rrggbb`` colour -> class id (255 to ignore).

    Examples
    --------
    >>> f = LabelLookup({1: 1, 2: 0, "#ff0000": 2})
    Traceback (most recent call last):
    ...
    geoseg.errors.ConfigError: a class map mixes pixel values and colours; use one kind
    >>> f = LabelLookup({"#ff0000": 1, "#000000": 0})
    >>> f.bands
    [1, 2, 3]
    >>> rgb = np.array([[[255, 0]], [[0, 0]], [[0, 0]]])
    >>> f(rgb, np.array([[True, True]])).tolist()
    [[1, 0]]
    """

    def __init__(self, lookup: Mapping[str | int, int]) -> None:
        kinds = {isinstance(k, str) for k in lookup}
        if len(kinds) > 1:
            raise ConfigError("a class map mixes pixel values and colours; use one kind")
        self.rgb = kinds == {True}
        self.codes = {
            (int(k[1:], 16) if isinstance(k, str) else int(k)): v for k, v in lookup.items()
        }
        self.bands = [1, 2, 3] if self.rgb else [1]
        self._warned: set[int] = set()

    def __call__(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Class ids (int64 ``(H, W)``, 255 ignored) of ``values`` ``(bands, H, W)``.

        Values not in the map are ignored (and logged once); invalid pixels too.
        """
        v = np.asarray(values).astype(np.int64)
        codes = (v[0] << 16) | (v[1] << 8) | v[2] if self.rgb else v[0]
        uniq, inverse = np.unique(codes, return_inverse=True)
        mapped = np.array([self.codes.get(int(u), IGNORE_INDEX) for u in uniq], dtype=np.int64)
        seen = {int(u) for u in np.unique(codes[valid])}
        for u in sorted(seen - set(self.codes) - self._warned):
            shown = f"#{u:06x}" if self.rgb else str(u)
            log.warning("label value %s is not in the class map; its pixels are ignored", shown)
            self._warned.add(u)
        mask = mapped[inverse].reshape(codes.shape)
        mask[~valid] = IGNORE_INDEX
        return mask


def read_vector_labels(
    path: str,
    *,
    label_field: str,
    lookup: Mapping[str | int, int],
    layer: str | None = None,
    where: str = "labels",
) -> Any:
    """Read labelled polygons and map their class attribute to class ids.

    Parameters
    ----------
    path : str
        Vector file (anything pyogrio reads).
    label_field : str
        Attribute holding the class value.
    lookup : mapping
        Attribute value -> class id (255 to ignore); integral numbers match int keys.
    layer : str, optional
        Layer of a multi-layer file.
    where : str
        Config field named in errors.

    Returns
    -------
    geopandas.GeoDataFrame
        ``geometry`` (made valid) and ``class_id`` (int64), in the file's CRS.

    Raises
    ------
    ConfigError
        Unreadable file, missing attribute, or values the class map does not cover.
    GeoreferenceError
        The file has no CRS.
    """
    import geopandas as gpd

    try:
        frame = gpd.read_file(path, layer=layer)
    except Exception as exc:  # pyogrio raises several unrelated types for unreadable files
        raise ConfigError(f"{where}: cannot read vector labels {path} ({exc})") from exc
    if frame.crs is None:
        raise GeoreferenceError(
            f"{where}: {path} has no CRS; vector labels need one to be placed on the imagery"
        )
    if label_field not in frame.columns:
        raise ConfigError(
            f"{where}: {path} has no attribute {label_field!r}; its attributes are "
            f"{[c for c in frame.columns if c != 'geometry']}; set label_field"
        )
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    keys = [_key(v) for v in frame[label_field].tolist()]
    unknown = sorted({str(k) for k in keys if k not in lookup})
    if unknown:
        raise ConfigError(
            f"{where}: {path} has {label_field!r} values {unknown[:10]} that the class map "
            f"does not cover (it maps {sorted(str(k) for k in lookup)}); add them to class_map, "
            "mapping unwanted ones to 'ignore'"
        )
    geoms = shapely.make_valid(np.asarray(frame.geometry.values, dtype=object))
    ids = np.array([lookup[k] for k in keys], dtype=np.int64)
    return gpd.GeoDataFrame({"class_id": ids}, geometry=list(geoms), crs=frame.crs)


def _key(value: Any) -> str | int:
    """Attribute values as class-map keys: integral numbers as int, the rest as str."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    return str(value)
