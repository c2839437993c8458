"""Int8 ONNX graphs of a checkpoint, calibrated and checked against float32.

``quantize_checkpoint`` statically quantizes a checkpoint's float32 ONNX graph with
ONNX Runtime's own tools (QDQ format, per-channel int8 weights, uint8 activations
calibrated by min/max on tiles of real or generated imagery), leaving the first
convolutions and the last one in float32: the full-resolution layers next to the
input and the class logits are where a uint8 grid costs the most agreement.  How many
leading convolutions stay float32 is searched (:data:`KEEP_FLOAT_STEPS`, fewest first)
on tiles of their own.  It then checks the result on tiles it was neither calibrated
nor chosen on, against float32 and, when labels exist, against the truth:

* class agreement with float32 >= :data:`MIN_AGREEMENT` of the valid pixels;
* per-class IoU within :data:`MAX_IOU_DROP` of float32's (labelled tiles only).

The graph and its record (``model.int8.onnx`` + ``model.int8.onnx.json``, with the
sha256 of the weights it came from, the calibration and the check) are written into
the checkpoint directory; ``--precision auto`` runs it only when the check passed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.errors import ConfigError, OutputExistsError
from geoseg.models.checkpoint import load_checkpoint, resolve_model_path, sha256_file

log = logging.getLogger(__name__)

INT8_NAME = "model.int8.onnx"
INT8_META_NAME = "model.int8.onnx.json"

#: The accuracy check: class agreement with float32 and the largest per-class IoU drop.
MIN_AGREEMENT = 0.99
MAX_IOU_DROP = 0.01
#: Leading float32 convolutions tried, fewest first, when none is asked for.  Errors of the
#: input's first layers (full resolution, few channels) reach every later layer; on the
#: bundled model keeping 6 of them moved class agreement from 0.973 to 0.994.
KEEP_FLOAT_STEPS = (1, 2, 4, 6, 8, 12, 16)


@dataclass
class QuantCheck:
    """What the accuracy check measured (the record keeps it)."""

    tiles: int
    pixels: int
    agreement: float
    iou_fp32: dict[str, float]
    iou_int8: dict[str, float]
    passed: bool


def _normalise(card: Any, chip: np.ndarray) -> np.ndarray:
    lo, hi = card.input_range
    mean = np.asarray(card.mean, np.float32)[:, None, None]
    std = np.asarray(card.std, np.float32)[:, None, None]
    x = (chip.astype(np.float32) - lo) / (hi - lo)
    return ((x - mean) / std).astype(np.float32)


def _raster_tiles(
    path: str, card: Any, size: int, count: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """``count`` random ``size`` tiles of a raster's model bands (no labels)."""
    import rasterio
    from rasterio.windows import Window

    from geoseg.io.read import describe, select_bands

    spec = describe(path)
    bands = select_bands(spec, card.bands, None)
    rng = np.random.default_rng(seed)
    with rasterio.open(path) as ds:
        if ds.width < size or ds.height < size:
            raise ConfigError(f"calibration raster {path} is smaller than one {size} px tile")
        for _ in range(count):
            r = int(rng.integers(0, ds.height - size + 1))
            c = int(rng.integers(0, ds.width - size + 1))
            yield ds.read(list(bands), window=Window(c, r, size, size)), None


def _scene_tiles(
    card: Any, size: int, count: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Tiles of generated scenes with their truth (RGB 8-bit models only)."""
    from rasterio.windows import Window

    from geoseg.synth import SceneSpec, render_window

    if len(card.bands) != 3:
        raise ConfigError(
            f"{card.name} takes {len(card.bands)} bands; generated scenes are RGB: pass "
            "calibration=RASTER (imagery like the model's) to quantize it"
        )
    ps = card.pixel_size_m or 1.0
    for i in range(count):
        spec = SceneSpec(size, size, pixel_size=ps, seed=seed + i)
        rgb, classes = render_window(spec, Window(0, 0, size, size))
        yield rgb, classes


def _tiles(
    card: Any, rasters: Sequence[str], size: int, count: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    if not rasters:
        return list(_scene_tiles(card, size, count, seed))
    per = max(1, -(-count // len(rasters)))
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    for i, path in enumerate(rasters):
        out += list(_raster_tiles(str(path), card, size, per, seed + 1000 * i))
    return out[:count]


def _iou(truth: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.bincount(truth.ravel() * n + pred.ravel(), minlength=n * n).reshape(n, n)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def check_int8(
    fp32: Path, int8: Path, card: Any, tiles: Sequence[tuple[np.ndarray, np.ndarray | None]]
) -> QuantCheck:
    """Compare the two graphs on ``tiles``: class agreement, and per-class IoU where labelled."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(str(fp32), so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])
    n = card.n_classes
    agree = total = 0
    truth_all: list[np.ndarray] = []
    pa_all: list[np.ndarray] = []
    pb_all: list[np.ndarray] = []
    for chip, truth in tiles:
        x = _normalise(card, chip)[None]
        pa = a.run(["probs"], {"input": x})[0][0][:n].argmax(0)
        pb = b.run(["probs"], {"input": x})[0][0][:n].argmax(0)
        agree += int((pa == pb).sum())
        total += pa.size
        if truth is not None:
            ok = truth < n
            truth_all.append(truth[ok])
            pa_all.append(pa[ok])
            pb_all.append(pb[ok])
    names = [c.name for c in card.classes]
    iou_a: dict[str, float] = {}
    iou_b: dict[str, float] = {}
    if truth_all:
        t = np.concatenate(truth_all).astype(np.int64)
        ia = _iou(t, np.concatenate(pa_all).astype(np.int64), n)
        ib = _iou(t, np.concatenate(pb_all).astype(np.int64), n)
        iou_a = {names[i]: float(ia[i]) for i in range(n) if np.isfinite(ia[i])}
        iou_b = {names[i]: float(ib[i]) for i in range(n) if np.isfinite(ib[i])}
    agreement = agree / max(total, 1)
    drops = [iou_a[k] - iou_b.get(k, 0.0) for k in iou_a]
    passed = agreement >= MIN_AGREEMENT and all(d <= MAX_IOU_DROP for d in drops)
    return QuantCheck(len(tiles), total, agreement, iou_a, iou_b, passed)


def quantize_checkpoint(
    checkpoint: str | Path,
    *,
    calibration: Sequence[str | Path] = (),
    check: Sequence[str | Path] = (),
    tiles: int = 16,
    tile_size: int = 256,
    overwrite: bool = False,
    keep_float: int | None = None,
) -> tuple[Path, QuantCheck]:
    """Write ``model.int8.onnx`` (+ record) into a checkpoint that carries its float32 graph.

    Parameters
    ----------
    checkpoint : str or Path
        Checkpoint directory with ``model.onnx`` (``geoseg models export`` writes it).
    calibration : sequence of path
        Rasters to calibrate on (default: generated scenes, for RGB models).
    check : sequence of path
        Rasters for the accuracy check (default: other generated scenes, with truth).
    tiles, tile_size : int
        Calibration (and check) tiles and their edge in pixels.
    keep_float : int, optional
        Leading convolutions (from the input on; at least 1) kept in float32,
        besides the last one.  None searches :data:`KEEP_FLOAT_STEPS` for the fewest that
        pass the check on a third set of tiles (``tiles`` tiles, other seeds),
        so the recorded check is made on tiles the choice never saw.

    Returns
    -------
    (path, QuantCheck)
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    directory = resolve_model_path(checkpoint)
    loaded = load_checkpoint(directory, lazy=True)
    if loaded.card.task == "instance":
        raise ConfigError(
            f"{loaded.card.name} is an instance model ({loaded.card.architecture}): it runs on "
            "PyTorch in float32; there is no int8 graph to make"
        )
    shipped = loaded.onnx_graph
    if shipped is None:
        raise ConfigError(
            f"{directory} carries no float32 ONNX graph of its weights; run "
            f"'geoseg models export {directory}' first"
        )
    out, meta = directory / INT8_NAME, directory / INT8_META_NAME
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True to quantize again")
    card = loaded.card
    calib = _tiles(card, [str(p) for p in calibration], tile_size, tiles, seed=1)
    held = _tiles(card, [str(p) for p in check], tile_size, tiles, seed=10_001)
    steps = KEEP_FLOAT_STEPS if keep_float is None else (keep_float,)
    select = (
        _tiles(card, [str(p) for p in check], tile_size, tiles, seed=20_001)
        if len(steps) > 1
        else []
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter({"input": _normalise(card, chip)[None]} for chip, _ in calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="geoseg-int8-", dir=directory) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(shipped[0]), str(pre))
        import onnx

        convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        staged = Path(tmp) / INT8_NAME
        tried: list[dict[str, Any]] = []
        candidates = sorted({max(1, min(k, len(convs) - 2)) for k in steps})
        for k in candidates:
            kept = [*convs[:k], convs[-1]] if len(convs) > 2 else []
            quantize_static(
                str(pre),
                str(staged),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["Conv"],
                nodes_to_exclude=kept,
            )
            if select:
                trial = check_int8(shipped[0], staged, card, select)
                tried.append(
                    {
                        "leading_float_convs": max(k, 1),
                        "agreement": trial.agreement,
                        "passed": trial.passed,
                    }
                )
                log.info(
                    "int8 with %d leading float convs: agreement %.4f", max(k, 1), trial.agreement
                )
                if trial.passed:
                    break
        result = check_int8(shipped[0], staged, card, held)
        record = {
            "weights_sha256": loaded.sha256,
            "onnx_sha256": sha256_file(staged),
            "precision": "int8",
            "method": "onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 "
            f"activations, min/max calibration, Conv only; the first {max(len(kept) - 1, 0)} and the "
            "last Conv in float32",
            "float_convs": kept,
            "selection": {
                "source": "the check's source, other tiles (seed 20001)",
                "convs": len(convs),
                "tried": tried,
            }
            if select
            else None,
            "calibration": {
                # File names only: the record travels with the checkpoint, not this machine.
                "source": [Path(p).name for p in calibration] or "generated scenes (geoseg.synth)",
                "tiles": len(calib),
                "tile_size": tile_size,
            },
            "check": {
                "source": [Path(p).name for p in check]
                or "generated scenes (other seeds), with truth",
                **asdict(result),
                "min_agreement": MIN_AGREEMENT,
                "max_iou_drop": MAX_IOU_DROP,
            },
        }
        os.replace(staged, out)
    meta.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out, result


def int8_graph(directory: Path, weights_sha256: str) -> tuple[Path, dict[str, Any]] | None:
    """A checkpoint's int8 graph and record, if made from these weights and unaltered."""
    graph, meta = directory / INT8_NAME, directory / INT8_META_NAME
    if not graph.is_file():
        return None
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s has no readable %s (%s); not used", directory, meta.name, exc)
        return None
    if record.get("weights_sha256") != weights_sha256 or record.get("onnx_sha256") != sha256_file(
        graph
    ):
        log.warning("%s was made from other weights or altered since; not used", graph)
        return None
    return graph, record


__all__ = ["INT8_NAME", "QuantCheck", "check_int8", "int8_graph", "quantize_checkpoint"]
