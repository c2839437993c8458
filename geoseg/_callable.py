"""Submodules that double as the public function of the same name.

``geoseg.vectorize`` and ``geoseg.evaluate`` name both a submodule and a function of
the public API (:mod:`geoseg.api`).  Once the submodule is imported, Python makes it
the package attribute, so the module itself is made callable and forwards to the
function: ``geoseg.vectorize(classes, dst)`` works whatever was imported first.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def forward_calls(module_name: str, function: str) -> None:
    """Make module ``module_name`` callable as ``geoseg.api.<function>``."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from geoseg import api

            return getattr(api, function)(*args, **kwargs)

    _CallableModule.__call__.__doc__ = f"Same as :func:`geoseg.api.{function}`."
    sys.modules[module_name].__class__ = _CallableModule
