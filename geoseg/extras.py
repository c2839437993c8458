"""Which optional parts of geoseg are installed, and one clear line when one is missing.

The core install (``pip install geoseg``) predicts, vectorizes, runs batches, the
xarray accessor and the demo on the CPU with ONNX Runtime: the bundled model ships
its ONNX graph.  The extras add the rest:

=========  ==========================================  =====================================
extra      brings                                      for
=========  ==========================================  =====================================
``torch``  torch, torchvision, segmentation-models-    the PyTorch backend, GPUs, registry
           pytorch, timm, onnx                          models, ``models wrap``, exporting a
                                                       checkpoint without an ONNX graph
``train``  ``torch`` plus torchgeo                     ``geoseg train`` and ``geoseg evaluate``
``all``    both
``test``   ``all`` plus pytest, hypothesis, ruff, mypy the test suite
=========  ==========================================  =====================================

Nothing here imports the packages it asks about (``importlib.util.find_spec`` only).
"""

from __future__ import annotations

import importlib.util

from geoseg.errors import MissingExtraError

#: The import names each extra brings.
EXTRAS: dict[str, tuple[str, ...]] = {
    "torch": ("torch", "torchvision", "segmentation_models_pytorch", "timm", "onnx"),
    "train": ("torch", "torchvision", "segmentation_models_pytorch", "timm", "onnx", "torchgeo"),
    "parquet": ("pyarrow",),
}

_WHAT = {"torch": "PyTorch", "train": "PyTorch and torchgeo", "parquet": "pyarrow"}


def missing(extra: str) -> list[str]:
    """Import names of ``extra`` that are not installed (empty when it is complete)."""
    return [name for name in EXTRAS[extra] if not _findable(name)]


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules[name] = None
        return False


def installed(extra: str) -> bool:
    """Whether every package of ``extra`` is installed."""
    return not missing(extra)


def require(extra: str, what: str) -> None:
    """Raise one clear line if ``extra`` is not installed.

    Parameters
    ----------
    extra : {"torch", "train", "parquet"}
    what : str
        The feature, as the start of the message ("training", "backend='torch'").

    Raises
    ------
    MissingExtraError
        Naming the feature, what it needs and the pip command that installs it.
    """
    gone = missing(extra)
    if gone:
        raise MissingExtraError(
            f"{what} needs {_WHAT[extra]} ({', '.join(gone)} not installed): "
            f"pip install 'geoseg[{extra}]'"
        )


def report() -> dict[str, bool]:
    """``{extra: installed}`` for every extra, as ``geoseg info`` prints it."""
    return {extra: installed(extra) for extra in EXTRAS}
