"""Pixel metrics: moved to :mod:`geoseg.metrics` (evaluation needs them without training code)."""

from geoseg.metrics import *  # noqa: F403
from geoseg.metrics import __all__  # noqa: F401
