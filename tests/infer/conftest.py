"""Fixtures of the inference tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh ONNX export cache for one test (never the user's); yields its folder."""
    root = tmp_path_factory.mktemp("geoseg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOSEG_CACHE_DIR", str(root))
        yield root / "onnx"
