"""Int8 against float32 on the CPU, side by side in one run: model only and end to end.

For a checkpoint that carries ``model.int8.onnx`` (``geoseg models quantize``):

* the machine's measured peaks through ONNX Runtime (MLAS), 2 threads by default: a
  float32 ``MatMul`` (GFLOP/s) and a uint8 x int8 ``MatMulInteger`` (GOP/s), large
  square matrices, best of several runs, measured before and after;
* the network's work per tile, counted from the ONNX graph's convolutions (shape
  inference at the tile size; one multiply-add = 2 operations), split into the
  convolutions the int8 graph runs in int8 and those it keeps in float32;
* model-only Mpx/s through :class:`geoseg.infer.predictor.Predictor` with the default
  workers (normalised tiles in, probabilities out), fp32 and int8 interleaved;
* end-to-end Mpx/s through :func:`geoseg.pipeline.run_scene` (GeoTIFF in, class COG out,
  model already loaded), fp32 and int8 interleaved;
* for each row the fraction of the matching peak reached (int8 rows: int8 work against
  the int8 peak plus float work against the float peak, as a time budget).

Usage::

    python benchmarks/bench_int8.py [--model default] [--size 2048] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_raster
from bench_backends import ort_matmul_gflops, read_tiles, timed_pass


def conv_ops(graph_path: Path, bands: int, tile: int, float_convs: set[str]) -> tuple[float, float]:
    """Operations (2 per multiply-add) of the graph's convolutions on one tile: (int8, float)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(graph_path))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    for d, v in zip(dims, (1, bands, tile, tile), strict=True):
        d.ClearField("dim_param")
        d.dim_value = v
    model = shape_inference.infer_shapes(model)
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in [*model.graph.value_info, *model.graph.output]
    }
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    # In a QDQ graph a convolution's weight is the output of a DequantizeLinear node.
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    q_ops = f_ops = 0.0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        out = shapes.get(node.output[0])
        w = weights.get(node.input[1])
        if not out or not w:
            continue
        # w: (C_out, C_in / groups, kh, kw); every output element does C_in/groups*kh*kw MACs.
        macs = float(np.prod(out)) * w[1] * w[2] * w[3]
        if node.name in float_convs:
            f_ops += 2 * macs
        else:
            q_ops += 2 * macs
    return q_ops, f_ops


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="default")
    ap.add_argument("--size", type=int, default=2048, help="end-to-end raster edge in pixels")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="[default: available cores]")
    ap.add_argument("--workdir", default="/tmp/geoseg-bench")
    args = ap.parse_args()

    import geoseg.pipeline as pipeline
    from geoseg.infer.backends import default_threads
    from geoseg.infer.predictor import Predictor
    from geoseg.infer.quantize import INT8_NAME, int8_graph
    from geoseg.models import load_checkpoint

    threads = args.threads or default_threads()
    loaded = load_checkpoint(args.model, lazy=True)
    card = loaded.card
    found = int8_graph(Path(loaded.path), loaded.sha256)
    if found is None or loaded.onnx_graph is None:
        sys.exit(f"{loaded.path} has no valid {INT8_NAME}; run 'geoseg models quantize' first")
    int8_path, record = found
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    pixel = card.pixel_size_m or 0.5
    src = make_raster(work / f"scene-{args.size}-{pixel:g}m.tif", args.size, pixel_size=pixel)
    tiles = read_tiles(src, card)
    tile_px = tiles.shape[2] * tiles.shape[3]
    mpx_tiles = len(tiles) * tile_px / 1e6
    mpx_e2e = args.size * args.size / 1e6
    log = sys.stderr

    peaks = {"fp32": ort_matmul_gflops(threads), "int8": ort_matmul_gflops(threads, integer=True)}
    q_ops, f_ops = conv_ops(int8_path, card.in_channels, card.tile_size, set(record["float_convs"]))
    all_ops = q_ops + f_ops
    print(f"# peaks {peaks}, {all_ops / 1e9:.1f} GOP per tile", file=log, flush=True)

    predictors = {
        p: Predictor(loaded, card, device="cpu", backend="onnx", precision=p, threads=threads)
        for p in ("fp32", "int8")
    }
    for p, pred in predictors.items():
        assert pred.precision == p, (p, pred.precision)
        pred(tiles[: pred.batch_size])
    model_only: dict[str, list[float]] = {p: [] for p in predictors}
    e2e: dict[str, list[float]] = {p: [] for p in predictors}
    dst = work / "bench-int8-classes.tif"
    for r in range(args.rounds):
        for p, pred in predictors.items():
            model_only[p].append(timed_pass(pred, tiles))
        for p in predictors:
            t0 = time.perf_counter()
            pipeline.run_scene(
                src,
                dst,
                loaded,
                pipeline.PredictConfig(overwrite=True, device="cpu", backend="onnx", precision=p),
            )
            e2e[p].append(time.perf_counter() - t0)
        print(f"# round {r + 1}/{args.rounds} done", file=log, flush=True)
    peaks["fp32"] = max(peaks["fp32"], ort_matmul_gflops(threads))
    peaks["int8"] = max(peaks["int8"], ort_matmul_gflops(threads, integer=True))

    def budget(p: str) -> float:
        """Seconds one tile would take at the peaks."""
        if p == "fp32":
            return all_ops / (peaks["fp32"] * 1e9)
        return q_ops / (peaks["int8"] * 1e9) + f_ops / (peaks["fp32"] * 1e9)

    print(
        f"model: {args.model} ({card.architecture}/{card.encoder}); {threads} threads; "
        f"{len(tiles)} tiles of {card.tile_size}²; end to end {args.size}² px; "
        f"int8 graph: {record['method']}"
    )
    print(
        f"peaks (ONNX Runtime, {threads} threads): float32 MatMul {peaks['fp32']:.1f} GFLOP/s, "
        f"uint8 x int8 MatMulInteger {peaks['int8']:.1f} GOP/s ({peaks['int8'] / peaks['fp32']:.2f}x); "
        f"work per tile {all_ops / 1e9:.2f} GOP, {100 * q_ops / all_ops:.1f} % of it in int8 "
        f"convolutions in the int8 graph"
    )
    print()
    print(
        "| precision | model-only Mpx/s (best / median) | end-to-end Mpx/s (best / median) | fraction of peak (model-only) |"
    )
    print("|---|---|---|---|")
    for p in predictors:
        mo, ee = min(model_only[p]), min(e2e[p])
        frac = budget(p) * len(tiles) / mo
        print(
            f"| {p} | {mpx_tiles / mo:.2f} / {mpx_tiles / statistics.median(model_only[p]):.2f} | "
            f"{mpx_e2e / ee:.2f} / {mpx_e2e / statistics.median(e2e[p]):.2f} | {100 * frac:.1f} % |"
        )
    print()
    print(
        f"int8 / fp32: model-only {min(model_only['fp32']) / min(model_only['int8']):.2f}x, "
        f"end to end {min(e2e['fp32']) / min(e2e['int8']):.2f}x (best rounds)"
    )


if __name__ == "__main__":
    main()
