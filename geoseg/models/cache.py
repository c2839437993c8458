"""One loaded model per process, shared by the tasks that run there.

A dask worker (``geoseg batch``) or a dask-backed xarray map (``da.geoseg.predict``)
runs many small tasks with the same checkpoint; loading it once per process and
checking its weights' sha256 on first use keeps every task on the same weights.
"""

from __future__ import annotations

import threading

from geoseg.errors import CheckpointError
from geoseg.models.checkpoint import LoadedModel, load_checkpoint

__all__ = ["cached_model", "remember_model"]

_MODELS: dict[tuple[str, str], LoadedModel] = {}
_LOCK = threading.Lock()


def cached_model(path: str, sha256: str) -> LoadedModel:
    """The model of checkpoint ``path`` whose weights hash to ``sha256``, loaded once per process.

    Only the most recent model is kept, so a long-lived worker serving
    batches with different models does not accumulate them.

    Raises
    ------
    CheckpointError
        If the weights on disk no longer match ``sha256`` (the checkpoint was
        replaced while the batch ran).
    """
    key = (str(path), sha256)
    with _LOCK:
        loaded = _MODELS.get(key)
        if loaded is None:
            loaded = load_checkpoint(path, lazy=True)
            if loaded.sha256 != sha256:
                raise CheckpointError(
                    f"the weights of {path} changed after the run started (sha256 "
                    f"{loaded.sha256[:12]}… instead of {sha256[:12]}…); keep checkpoints "
                    "unchanged while they are in use and start the run again"
                )
            _MODELS.clear()
            _MODELS[key] = loaded
        return loaded


def remember_model(loaded: LoadedModel) -> None:
    """Put an already loaded model in this process's cache (under its path and sha256)."""
    with _LOCK:
        _MODELS.clear()
        _MODELS[(str(loaded.path), loaded.sha256)] = loaded
