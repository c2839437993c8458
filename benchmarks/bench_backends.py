"""Inference backends side by side, against the machine's measured peak, model-only and end to end.

One run, the same tiles for every row (all tiles of the end-to-end raster's grid):

* FLOPs per pixel of the model, counted with ``torch.utils.flop_counter.FlopCounterMode``
  on one tile (a multiply-add counts 2);
* the machine's peak as reached in practice: the best GFLOP/s of a 4096² fp32 matrix
  product through ``torch.mm`` and through ONNX Runtime's MatMul (on a GPU: ``torch.mm``
  in fp32 and bf16), measured before and after the runs;
* model-only Mpx/s through :class:`geoseg.infer.predictor.Predictor` (normalised
  tiles in, probabilities out), each configuration run the way the pipeline runs it
  (several concurrent workers where it uses them): on CPU plain PyTorch eager fp32
  (contiguous), channels_last, ``torch.compile`` (in a subprocess with a time limit),
  ONNX Runtime with one 2-thread run at a time and with concurrent single-thread
  workers (the default); on CUDA PyTorch fp32 and bf16/fp16 autocast;
* end-to-end Mpx/s through :func:`geoseg.pipeline.run_scene` (GeoTIFF in, class COG
  out, model already loaded) with the default settings, and with plain PyTorch;
* end-to-end time / the fastest model-only time on the same tiles, the fraction of the
  peak each row reaches, and km²/h at 0.5 m pixels.

The raster is written at the model card's pixel size, so nothing is resampled.  Rounds
are interleaved (A, B, C, then again) and the best round is reported, so a machine
shared with other jobs skews every row alike; the median is printed too.  Usage::

    python benchmarks/bench_backends.py [--size 2048] [--rounds 3] [--model default]
        [--device cpu|cuda] [--no-compile] [--compile-timeout 600] [--no-plain-e2e]
        [--omp-wait-policy inherit|passive|active] [--workdir /tmp/geoseg-bench]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, make_raster

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


def ort_matmul_gflops(
    threads: int, n: int = 4096, repeats: int = 5, integer: bool = False
) -> float:
    """The same product through ONNX Runtime's own GEMM (MLAS), which the ONNX backend uses.

    ``integer``: a uint8 x int8 -> int32 ``MatMulInteger`` instead (GOP/s), what the
    convolutions of an int8 graph run on.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    a_type, b_type, c_type = (
        (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
        if integer
        else (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT)
    )
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger" if integer else "MatMul", ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", a_type, [n, n]),
            helper.make_tensor_value_info("b", b_type, [n, n]),
        ],
        [helper.make_tensor_value_info("c", c_type, [n, n])],
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
    if integer:
        feeds = {
            "a": rng.integers(0, 256, (n, n), dtype=np.uint8),
            "b": rng.integers(-128, 128, (n, n), dtype=np.int8),
        }
    else:
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


def read_tiles(src: Path, card: Any) -> np.ndarray:
    """Every tile of the run's grid, normalised as the pipeline would."""
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
    return np.stack(out)


def timed_pass(predictor: Any, tiles: np.ndarray) -> float:
    """Seconds to push every tile through ``predictor`` in its batches, its workers at once."""
    batch = predictor.batch_size
    batches = [tiles[i : i + batch] for i in range(0, len(tiles), batch)]
    t0 = time.perf_counter()
    if predictor.workers > 1:
        with ThreadPoolExecutor(predictor.workers) as pool:
            for _ in pool.map(predictor, batches):
                pass
    else:
        for b in batches:
            predictor(b)
    sync(predictor)
    return time.perf_counter() - t0


def sync(predictor: Any) -> None:
    import torch

    if getattr(predictor, "device", None) is not None and predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)


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


def end_to_end(
    src: Path, dst: Path, loaded: Any, options: dict[str, Any], predictor_kw: dict[str, Any]
) -> float:
    """Seconds of one ``run_scene`` (model already loaded) with ``options``.

    ``predictor_kw`` reaches the Predictor the pipeline builds (settings the CLI does
    not expose, such as a contiguous memory layout for plain PyTorch).
    """
    import geoseg.pipeline as pipeline
    from geoseg.infer.predictor import Predictor

    # PyTorch converts the weights' memory format in place: every run gets its own copy.
    loaded = loaded.with_model(copy.deepcopy(loaded.model))
    original = pipeline.Predictor
    if predictor_kw:

        def with_options(*args: Any, **kwargs: Any) -> Predictor:
            return Predictor(*args, **{**kwargs, **predictor_kw})

        pipeline.Predictor = with_options  # type: ignore[assignment,misc]
    try:
        t0 = time.perf_counter()
        pipeline.run_scene(src, dst, loaded, pipeline.PredictConfig(overwrite=True, **options))
        return time.perf_counter() - t0
    finally:
        pipeline.Predictor = original  # type: ignore[misc]


def gpu_peak_gflops(device: Any, dtype: Any, n: int = 8192, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=2048, help="end-to-end raster edge in pixels")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="[default: available cores]")
    ap.add_argument("--model", default="default", help="checkpoint or bundled model name")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    ap.add_argument("--compile-timeout", type=float, default=600.0)
    ap.add_argument(
        "--no-plain-e2e", action="store_true", help="skip the slow end-to-end plain PyTorch row"
    )
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

    from geoseg.infer.backends import cache_dir, default_threads, onnxruntime_available
    from geoseg.infer.predictor import Predictor, resolve_device
    from geoseg.models import load_checkpoint
    from geoseg.tiling import make_grid

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    threads = args.threads or default_threads()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_checkpoint(args.model)
    model_path = Path(loaded.path)
    card = loaded.card
    pixel = card.pixel_size_m or 0.5
    src = make_raster(work / f"scene-{args.size}-{pixel:g}m.tif", args.size, pixel_size=pixel)
    tiles = read_tiles(src, card)
    tiles_path = work / "bench-tiles.npy"
    np.save(tiles_path, tiles)
    tile_px = tiles.shape[2] * tiles.shape[3]
    mpx = len(tiles) * tile_px / 1e6
    e2e_mpx = args.size * args.size / 1e6
    log = sys.stderr

    if gpu:
        peaks = {
            "torch.mm fp32": gpu_peak_gflops(device, torch.float32),
            "torch.mm bf16": gpu_peak_gflops(device, torch.bfloat16),
        }
    else:
        peaks = {
            "torch.mm": matmul_peak_gflops(threads),
            **(
                {"onnxruntime MatMul": ort_matmul_gflops(threads)}
                if onnxruntime_available()
                else {}
            ),
        }
    fpp = flops_per_pixel(loaded.model, card.in_channels, card.tile_size)
    print(
        f"# peak {max(peaks.values()):.1f} GFLOP/s, {fpp / 1e3:.1f} kFLOP/px, {len(tiles)} tiles",
        file=log,
        flush=True,
    )

    def make(**kw: Any) -> Predictor:
        return Predictor(
            copy.deepcopy(loaded.model), card, device=str(device), threads=threads, **kw
        )

    t0 = time.perf_counter()
    candidates: dict[str, Predictor] = {}
    if gpu:
        candidates["torch fp32, channels_last"] = make(backend="torch", amp=False)
        candidates["torch autocast (default)"] = make(backend="torch")
    else:
        candidates["torch eager fp32, contiguous (plain)"] = make(
            backend="torch", channels_last=False
        )
        candidates["torch eager fp32, channels_last"] = make(backend="torch")
        if onnxruntime_available():
            candidates[f"onnxruntime, 1 run x {threads} threads, batch 2"] = make(
                backend="onnx", workers=1, batch_size=2
            )
            default = make()
            candidates[
                f"onnxruntime, {default.workers} runs x {default.backend.intra_threads} "
                f"thread(s), batch {default.batch_size} (default)"
            ] = default
    setup_s = time.perf_counter() - t0
    for predict in candidates.values():
        predict(tiles[: predict.batch_size])  # warm-up: allocator, kernels, ORT arena
        predict(tiles[: predict.batch_size])
        sync(predict)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(args.rounds):
        for name, predict in candidates.items():
            times[name].append(timed_pass(predict, tiles))
        print(f"# model-only round {r + 1}/{args.rounds} done", file=log, flush=True)

    compile_note = "skipped (--no-compile)" if not gpu or args.no_compile else "not run on GPU"
    if not gpu and not args.no_compile:
        res = run_compiled(model_path, tiles_path, 2, args.rounds, threads, args.compile_timeout)
        if isinstance(res, dict):
            times["torch.compile (inductor), batch 2"] = res["times"]
            compile_note = f"compiled in {res['compile_s']:.0f} s (first batch), separate process"
        else:
            compile_note = res
        print(f"# torch.compile: {compile_note}", file=log, flush=True)

    base_opts: dict[str, Any] = {"device": str(device), "threads": threads}
    e2e_runs: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "run_scene, default settings": (base_opts, {}),
    }
    if not gpu and onnxruntime_available():
        e2e_runs["run_scene, onnxruntime 1 run x 2 threads"] = (
            {**base_opts, "backend": "onnx", "workers": 1, "batch_size": 2},
            {},
        )
    if not args.no_plain_e2e:
        e2e_runs["run_scene, plain torch fp32 eager" + (" (no autocast)" if gpu else "")] = (
            {**base_opts, "backend": "torch", "batch_size": 2 if not gpu else None},
            {"channels_last": False, "amp": False},
        )
    e2e: dict[str, list[float]] = {name: [] for name in e2e_runs}
    dst = work / "bench-classes.tif"
    for r in range(args.rounds):
        for name, (opts, pkw) in e2e_runs.items():
            e2e[name].append(end_to_end(src, dst, loaded, opts, pkw))
        print(f"# end-to-end round {r + 1}/{args.rounds} done", file=log, flush=True)
    if gpu:
        peaks["torch.mm bf16"] = max(
            peaks["torch.mm bf16"], gpu_peak_gflops(device, torch.bfloat16)
        )
    else:
        # Measured again at the end: on a shared machine one measurement may catch a busy moment.
        peaks["torch.mm"] = max(peaks["torch.mm"], matmul_peak_gflops(threads))
        if "onnxruntime MatMul" in peaks:
            peaks["onnxruntime MatMul"] = max(
                peaks["onnxruntime MatMul"], ort_matmul_gflops(threads)
            )
    peak = max(peaks.values())
    grid = make_grid(
        args.size, args.size, tile=card.tile_size, overlap=card.overlap, stride=card.stride
    )
    # Overlapping tiles compute some pixels more than once: network work per raster pixel.
    overcompute = len(grid) * card.tile_size**2 / (args.size * args.size)
    fastest_name = min(times, key=lambda k: min(times[k]))
    fastest = min(times[fastest_name])
    plain_name = next((k for k in times if "plain" in k), next(iter(times)))
    plain = min(times[plain_name])

    def row(name: str, seconds: list[float], megapixels: float, work_px: float) -> str:
        best, med = min(seconds), statistics.median(seconds)
        rate = megapixels / best
        gflops = rate * work_px * fpp / 1e3
        kmh = rate * KM2_PER_MPX_AT_05M * SECONDS_PER_HOUR
        return (
            f"| {name} | {best:.2f} | {rate:.2f} | {megapixels / med:.2f} | "
            f"{plain / best:.2f}x | {best / fastest:.3f} | "
            f"{gflops:.1f} | {100 * gflops / peak:.1f} % | {kmh:.0f} |"
        )

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"model: {args.model} ({card.architecture}/{card.encoder}, {card.in_channels} bands, "
        f"{card.n_classes} classes); tiles {card.tile_size} px, overlap {card.overlap}; "
        f"{threads} threads; device {device}; torch {torch.__version__}"
    )
    print(
        f"FLOPs per pixel: {fpp / 1e3:.1f} k ({fpp * tile_px / 1e9:.1f} GFLOP per "
        f"{card.tile_size}² tile); measured peak: {peak:.1f} GFLOP/s ("
        + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items())
        + ")"
    )
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(
        f"raster {args.size}² at {pixel:g} m ({e2e_mpx:.1f} Mpx), {len(grid)} tiles "
        f"({mpx:.1f} Mpx of network input, {overcompute:.2f} px per raster px); best and "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"predictors built in {setup_s:.1f} s (ONNX exports cached in {cache_dir()})")
    print(f"torch.compile: {compile_note}")
    print(f"load average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}")
    print()
    print(
        "| path | s (best) | Mpx/s (best) | Mpx/s (median) | speed vs plain model-only "
        "| time / fastest model-only | GFLOP/s | of peak | km²/h at 0.5 m |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seconds in times.items():
        print(row(name, seconds, mpx, 1.0))
    for name, seconds in e2e.items():
        print(row(name, seconds, e2e_mpx, overcompute))
    print()
    e2e_default = min(e2e["run_scene, default settings"])
    plain_e2e = next((min(v) for k, v in e2e.items() if "plain" in k), None)
    print(
        f"Model-only rows push the {len(grid)} tiles of the end-to-end raster; Mpx/s count "
        "network input pixels there and raster pixels end to end (the same work: the "
        "end-to-end GFLOP/s include the tile overlap)."
    )
    e2e_median = statistics.median(e2e["run_scene, default settings"])
    print(
        f"end to end (default) / fastest model-only ({fastest_name}): "
        f"{e2e_default / fastest:.3f} best over best, "
        f"{e2e_median / statistics.median(times[fastest_name]):.3f} median over median"
    )
    print(f"end to end (default) vs plain fp32 eager model-only: {plain / e2e_default:.2f}x faster")
    if plain_e2e is not None:
        print(
            f"end to end (default) vs end to end with plain fp32 eager PyTorch: "
            f"{plain_e2e / e2e_default:.2f}x faster"
        )


if __name__ == "__main__":
    main()
