"""The offline demo: a generated sample scene through predict and vectorize.

``run_demo`` needs no download and no data of the user's own: it renders a
georeferenced sample scene (:mod:`geoseg.synth`), segments it with a model
(the bundled one by default) through the same :func:`geoseg.pipeline.run_scene`
and :func:`geoseg.pipeline.run_vectorize` users run, scores the classes against
the scene's exact ground truth, and draws a quicklook PNG.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.models.checkpoint import DEFAULT_MODEL, LoadedModel, load_checkpoint
from geoseg.pipeline import (
    PredictConfig,
    RunStats,
    VectorizeConfig,
    VectorStats,
    run_scene,
    run_vectorize,
)

ProgressFn = Callable[[str, int, int], None]


@dataclass
class DemoReport:
    """What the demo produced and measured."""

    outdir: Path
    files: dict[str, Path] = field(default_factory=dict)
    iou: dict[str, float] = field(default_factory=dict)
    predict: RunStats | None = None
    vectorize: VectorStats | None = None
    scene_seconds: float = 0.0

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = [f"{k:>11}: {v}" for k, v in self.files.items()]
        out.append(
            "IoU against the scene's ground truth: "
            + ", ".join(f"{k} {v:.3f}" for k, v in self.iou.items())
        )
        if self.vectorize is not None:
            for layer, n in self.vectorize.polygons.items():
                out.append(
                    f"{layer:>11}: {n:,} polygons, {self.vectorize.area_m2[layer] / 1e4:,.2f} ha"
                )
        if self.predict is not None:
            out.append(f"scene {self.scene_seconds:.1f} s; predict {self.predict.summary()}")
        if self.vectorize is not None:
            out.append(f"vectorize {self.vectorize.summary()}")
        return out


def confusion(truth: np.ndarray, pred: np.ndarray, n: int, nodata: int = 255) -> np.ndarray:
    """Confusion matrix ``(n, n)`` (rows truth, columns prediction) over valid pixels.

    >>> confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist()
    [[1, 0], [1, 1]]
    """
    ok = (truth < n) & (pred < n) & (pred != nodata)
    return np.bincount(truth[ok].astype(np.int64) * n + pred[ok], minlength=n * n).reshape(n, n)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix; NaN for classes absent from both."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def run_demo(
    outdir: str | Path,
    *,
    size: int = 4096,
    seed: int = 0,
    model: LoadedModel | str | Path = DEFAULT_MODEL,
    overwrite: bool = False,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> DemoReport:
    """Generate a sample scene, segment and vectorize it, score it and draw a quicklook.

    Parameters
    ----------
    outdir : str or Path
        Folder for the outputs (created if missing).
    size : int
        Scene width and height in pixels (0.5 m pixels).
    seed : int
        Scene seed.
    model : LoadedModel, str or Path
        Model to run (default: the bundled model).
    overwrite : bool
        Replace existing outputs.
    device : str
        Inference device.
    progress : callable, optional
        ``progress(stage, done, total)``.

    Returns
    -------
    DemoReport
    """
    from geoseg.io.demo_outputs import read_class_strips
    from geoseg.io.quicklook import write_quicklook
    from geoseg.synth import make_sample_scene

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    report = DemoReport(out)
    loaded = model if isinstance(model, LoadedModel) else load_checkpoint(model, lazy=True)

    def stage(name: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, done, total)

    t0 = time.perf_counter()
    scene = make_sample_scene(
        out, size=size, seed=seed, overwrite=overwrite, progress=stage("scene")
    )
    report.scene_seconds = time.perf_counter() - t0
    classes = out / "sample_classes_predicted.tif"
    gpkg = out / "sample.gpkg"
    report.predict = run_scene(
        scene.image,
        classes,
        loaded,
        PredictConfig(
            overwrite=overwrite, device=device, probabilities=out / "sample_probabilities.tif"
        ),
        progress=stage("predict"),
    )
    report.vectorize = run_vectorize(
        classes,
        gpkg,
        VectorizeConfig(confidence=out / "sample_probabilities.tif", overwrite=overwrite),
        progress=stage("vectorize"),
    )
    n = loaded.card.n_classes
    cm = np.zeros((n, n), dtype=np.int64)
    for truth, pred in read_class_strips(scene.classes, classes):
        cm += confusion(truth, pred, n)
    iou = iou_from_confusion(cm)
    report.iou = {c.name: float(iou[c.id]) for c in loaded.card.classes}
    quicklook = out / "sample_quicklook.png"
    write_quicklook(
        scene.image,
        classes,
        quicklook,
        polygons=gpkg,
        title=f"geoseg demo: {loaded.card.name}",
        overwrite=overwrite,
    )
    report.files = {
        "image": scene.image,
        "truth": scene.classes,
        "classes": classes,
        "polygons": gpkg,
        "quicklook": quicklook,
    }
    return report


def report_json(report: DemoReport) -> dict[str, Any]:
    """The report as JSON-friendly data."""
    return {
        "files": {k: str(v) for k, v in report.files.items()},
        "iou": report.iou,
        "polygons": report.vectorize.polygons if report.vectorize else {},
        "mpx_per_s": report.predict.mpx_per_s if report.predict else None,
    }
