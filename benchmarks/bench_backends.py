"""Inference backends side by side, against the machine's measured fp32 peak.

One run, the same tiles for every backend:

* FLOPs per pixel of the model, counted with ``torch.utils.flop_counter.FlopCounterMode``
  on one tile (a multiply-add counts 2);
* the machine's fp32 peak as reached in practice: the best GFLOP/s of a 4096² matrix
  product through ``torch.mm`` and through ONNX Runtime's MatMul, same thread count,
  measured before and after the runs;
* model-only Mpx/s through :class:`geoseg.infer.predictor.Predictor` (normalised
  tiles in, probabilities out) for PyTorch eager fp32 contiguous, PyTorch
  channels_last, ``torch.compile`` (in a subprocess with a time limit) and ONNX Runtime;
* end-to-end Mpx/s through :func:`geoseg.pipeline.run_scene` (GeoTIFF in, class COG
  out) with the default backend, and with PyTorch for comparison;
* the fraction of the peak each reaches (end to end counting the pixels that overlapping
  tiles compute twice), and km²/h at 0.5 m pixels.

Rounds are interleaved (backend A, B, C, then again) and the best round is
reported, so a machine shared with other jobs skews every backend alike;
the median is printed too.  Usage::

    python benchmarks/bench_backends.py [--size 2048] [--tiles 8] [--batch-size 2]
        [--rounds 3] [--model CHECKPOINT] [--no-compile] [--compile-timeout 600]
        [--omp-wait-policy inherit|passive|active] [--workdir /tmp/geoseg-bench]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, make_raster
from bench_inference import make_model

#: km² covered by one megapixel of 0.5 m pixels, times seconds per hour.
KM2_PER_MPX_AT_05M = 0.25
SECONDS_PER_HOUR = 3600.0

COMPILED = r"""
import json, sys, time
import numpy as np
import torch
from geoseg.infer.predictor import Predictor
from geoseg.models import load_checkpoint
model, tiles_path, batch, rounds, threads = sys.argv[1:6]
batch, rounds, threads = int(batch), int(rounds), int(threads)
tiles = np.load(tiles_path)
loaded = load_checkpoint(model)
pred = Predictor(loaded.model, loaded.card, device="cpu", backend="torch", compile=True,
                 batch_size=batch, threads=threads)
t0 = time.perf_counter()
pred(tiles[:batch])
compile_s = time.perf_counter() - t0
if pred.backend.name != "torch-compile":
    raise SystemExit("torch.compile fell back to eager")
times = []
for _ in range(rounds):
    t0 = time.perf_counter()
    for i in range(0, len(tiles), batch):
        pred(tiles[i : i + batch])
    times.append(time.perf_counter() - t0)
print(json.dumps({"compile_s": compile_s, "times": times}))
"""


def matmul_peak_gflops(threads: int, n: int = 4096, repeats: int = 5) -> float:
    """Best GFLOP/s of an ``n x n`` fp32 matrix product (2 n³ FLOPs) over ``repeats`` runs."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def ort_matmul_gflops(threads: int, n: int = 4096, repeats: int = 5) -> float:
    """The same product through ONNX Runtime's own GEMM (MLAS), which the ONNX backend uses."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(
        onnx.shape_inference.infer_shapes(model).SerializeToString(),
        so,
        providers=["CPUExecutionProvider"],
    )
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((n, n), dtype=np.float32) for k in ("a", "b")}
    sess.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def flops_per_pixel(model: Any, bands: int, tile: int) -> float:
    """FLOPs of one forward pass on a ``tile`` x ``tile`` input, divided by its pixels."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, bands, tile, tile)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / (tile * tile)


def read_tiles(src: Path, card: Any, count: int) -> np.ndarray:
    """The first ``count`` tiles of the run's grid, normalised as the pipeline would."""
    from geoseg.infer.predictor import normalize
    from geoseg.io.read import RasterSource
    from geoseg.tiling import make_grid

    out = []
    with RasterSource(src) as r:
        grid = make_grid(
            r.spec.height,
            r.spec.width,
            tile=card.tile_size,
            overlap=card.overlap,
            stride=card.stride,
        )
        for tile in grid:
            data, valid = r.read(tile.window)
            out.append(normalize(data, valid, card))
            if len(out) == count:
                break
    return np.stack(out)


def timed_pass(predict: Callable[[np.ndarray], np.ndarray], tiles: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(tiles), batch):
        predict(tiles[i : i + batch])
    return time.perf_counter() - t0


def run_compiled(
    model: Path, tiles_path: Path, batch: int, rounds: int, threads: int, timeout: float
) -> dict[str, Any] | str:
    """Time ``torch.compile`` in a fresh process; a reason string when it fails or is too slow."""
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                COMPILED,
                str(model),
                str(tiles_path),
                str(batch),
                str(rounds),
                str(threads),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"not finished within {timeout:.0f} s"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["failed"])[-1]
        return f"failed: {last[:120]}"
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def end_to_end(src: Path, dst: Path, loaded: Any, backend: str | None, threads: int) -> float:
    """Seconds of one ``run_scene`` with ``backend`` (None: the pipeline's default)."""
    import geoseg.pipeline as pipeline

    loaded = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    from geoseg.infer.predictor import Predictor

    fields = {f.name for f in dataclasses.fields(pipeline.PredictConfig)}
    options: dict[str, Any] = {"device": "cpu", "overwrite": True, "threads": threads}
    original = pipeline.Predictor
    if backend is not None and "backend" in fields:
        options["backend"] = backend
    elif backend is not None:
        # Until PredictConfig has a backend field, choose it where run_scene builds the predictor.
        def with_backend(*args: Any, **kwargs: Any) -> Predictor:
            return Predictor(*args, **kwargs, backend=backend)

        pipeline.Predictor = with_backend  # type: ignore[assignment,misc]
    try:
        t0 = time.perf_counter()
        pipeline.run_scene(src, dst, loaded, pipeline.PredictConfig(**options))
        return time.perf_counter() - t0
    finally:
        pipeline.Predictor = original  # type: ignore[misc]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=2048, help="end-to-end raster edge in pixels")
    ap.add_argument("--tiles", type=int, default=8, help="tiles for the model-only passes")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="[default: available cores]")
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="tu-efficientnet_lite0")
    ap.add_argument("--model", default=None, help="checkpoint instead of random weights")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument("--compile-timeout", type=float, default=600.0)
    ap.add_argument("--workdir", default="/tmp/geoseg-bench")
    ap.add_argument(
        "--omp-wait-policy",
        choices=["inherit", "passive", "active"],
        default="inherit",
        help="OMP_WAIT_POLICY for PyTorch's OpenMP threads (read once, when torch is imported)",
    )
    args = ap.parse_args()
    if args.omp_wait_policy != "inherit":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()

    import torch

    from geoseg.infer.backends import cache_dir, default_threads
    from geoseg.infer.predictor import Predictor
    from geoseg.models import load_checkpoint
    from geoseg.tiling import make_grid

    threads = args.threads or default_threads()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model_path = Path(args.model) if args.model else make_model(work, args.arch, args.encoder)
    loaded = load_checkpoint(model_path)
    card = loaded.card
    src = make_raster(work / f"scene-{args.size}.tif", args.size)
    tiles = read_tiles(src, card, args.tiles)
    tiles_path = work / "bench-tiles.npy"
    np.save(tiles_path, tiles)
    tile_px = tiles.shape[2] * tiles.shape[3]
    mpx = len(tiles) * tile_px / 1e6
    log = sys.stderr

    torch_peak = matmul_peak_gflops(threads)
    ort_peak = ort_matmul_gflops(threads)
    fpp = flops_per_pixel(loaded.model, card.in_channels, card.tile_size)
    print(
        f"# peak {max(torch_peak, ort_peak):.1f} GFLOP/s, {fpp / 1e3:.1f} kFLOP/px",
        file=log,
        flush=True,
    )

    t0 = time.perf_counter()
    onnx_pred = Predictor(
        loaded.model,
        card,
        device="cpu",
        backend="onnx",
        batch_size=args.batch_size,
        threads=threads,
    )
    export_s = time.perf_counter() - t0
    candidates: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        # Each PyTorch predictor gets its own copy: it converts the weights' memory format in place.
        "torch eager fp32, contiguous": Predictor(
            copy.deepcopy(loaded.model),
            card,
            device="cpu",
            backend="torch",
            channels_last=False,
            threads=threads,
        ),
        "torch eager fp32, channels_last": Predictor(
            copy.deepcopy(loaded.model),
            card,
            device="cpu",
            backend="torch",
            channels_last=True,
            threads=threads,
        ),
        f"onnxruntime ({onnx_pred.backend.name})": onnx_pred,
    }
    for predict in candidates.values():
        predict(tiles[: args.batch_size])  # warm-up: allocator, kernels, ORT arena
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(args.rounds):
        for name, predict in candidates.items():
            times[name].append(timed_pass(predict, tiles, args.batch_size))
        print(f"# model-only round {r + 1}/{args.rounds} done", file=log, flush=True)

    compile_note = "skipped (--no-compile)"
    if not args.no_compile:
        res = run_compiled(
            model_path, tiles_path, args.batch_size, args.rounds, threads, args.compile_timeout
        )
        if isinstance(res, dict):
            times["torch.compile (inductor)"] = res["times"]
            compile_note = f"compiled in {res['compile_s']:.0f} s (first batch), separate process"
        else:
            compile_note = res
        print(f"# torch.compile: {compile_note}", file=log, flush=True)

    e2e: dict[str, list[float]] = {"run_scene, default backend": [], "run_scene, torch": []}
    for r in range(args.rounds):
        e2e["run_scene, default backend"].append(
            end_to_end(src, work / "bench-classes.tif", loaded, None, threads)
        )
        e2e["run_scene, torch"].append(
            end_to_end(src, work / "bench-classes.tif", loaded, "torch", threads)
        )
        print(f"# end-to-end round {r + 1}/{args.rounds} done", file=log, flush=True)
    e2e_mpx = args.size * args.size / 1e6
    # Measured again at the end: on a shared machine one measurement may catch a busy moment.
    torch_peak = max(torch_peak, matmul_peak_gflops(threads))
    ort_peak = max(ort_peak, ort_matmul_gflops(threads))
    # The machine's peak is what the best GEMM reaches; MKL and MLAS differ by CPU vendor.
    peak = max(torch_peak, ort_peak)
    grid = make_grid(
        args.size, args.size, tile=card.tile_size, overlap=card.overlap, stride=card.stride
    )
    # Overlapping tiles compute some pixels more than once: network work per raster pixel.
    overcompute = len(grid) * card.tile_size**2 / (args.size * args.size)

    base = min(times["torch eager fp32, contiguous"])

    def row(name: str, seconds: list[float], megapixels: float, ratio: str, work: float) -> str:
        best, med = min(seconds), statistics.median(seconds)
        rate = megapixels / best
        gflops = rate * work * fpp / 1e3
        kmh = rate * KM2_PER_MPX_AT_05M * SECONDS_PER_HOUR
        return (
            f"| {name} | {rate:.2f} | {megapixels / med:.2f} | {ratio} | "
            f"{gflops:.1f} | {100 * gflops / peak:.1f} % | {kmh:.0f} |"
        )

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"model: {model_path.name} ({card.architecture}/{card.encoder}, {card.in_channels} bands, "
        f"{card.n_classes} classes); tiles {card.tile_size} px, overlap {card.overlap}; "
        f"batch {args.batch_size}; {threads} threads; torch {torch.__version__}"
    )
    print(
        f"FLOPs per pixel: {fpp / 1e3:.1f} k ({fpp * tile_px / 1e9:.1f} GFLOP per "
        f"{card.tile_size}² tile); measured peak, fp32 4096² matmul: {peak:.1f} GFLOP/s "
        f"(torch.mm {torch_peak:.1f}, onnxruntime MatMul {ort_peak:.1f})"
    )
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(
        f"model-only: {len(tiles)} tiles ({mpx:.2f} Mpx), best and median of {args.rounds} "
        f"interleaved rounds; end-to-end: {args.size}² raster ({e2e_mpx:.1f} Mpx)"
    )
    print(f"ONNX export + session: {export_s:.1f} s (0 s export on a cache hit; {cache_dir()})")
    print(f"torch.compile: {compile_note}")
    print(f"load average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}")
    print()
    print(
        "| path | Mpx/s (best) | Mpx/s (median) | speed vs eager | GFLOP/s | of peak | km²/h at 0.5 m |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, seconds in times.items():
        print(row(name, seconds, mpx, f"{base / min(seconds):.2f}x", 1.0))
    e2e_base = min(e2e["run_scene, torch"])
    for name, seconds in e2e.items():
        print(row(name, seconds, e2e_mpx, f"{e2e_base / min(seconds):.2f}x", overcompute))
    print()
    print(
        "Mpx/s count input pixels; GFLOP/s and the fraction of peak count the network work done, "
        f"which end to end includes the tile overlap ({overcompute:.2f} px computed per raster "
        f"px for {len(grid)} tiles over {args.size}²). End-to-end speed is relative to "
        "run_scene with PyTorch."
    )


if __name__ == "__main__":
    main()
