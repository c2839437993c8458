"""Tiled inference: end-to-end vs model-only time on the same tiles, and peak memory by size.

For each raster size (default 4096, 16384 and 32768 px square, at the model card's pixel size so
nothing is resampled; the bundled model by default) it runs, each in
a fresh process so peak RSS is that run's own:

* model-only: the exact tiles of the run's grid, read beforehand (untimed), pushed through the
  same Predictor (timed), its concurrent workers at once as in the pipeline — the network's
  cost alone;
* end-to-end: ``geoseg.pipeline.run_scene`` from the GeoTIFF to the class COG (reading,
  normalising, blending, writing and the COG conversion included), the model loaded
  beforehand; start-up (imports and loading the model) is timed apart.

It prints a Markdown table: model-only s, end-to-end s, their ratio, Mpx/s, km²/h and peak RSS.
Usage::

    python benchmarks/bench_inference.py [--sizes 4096,16384,32768] [--model default|random|DIR]
        [--arch unet] [--encoder tu-efficientnet_lite0] [--workdir /tmp/geoseg-bench]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_raster, run_json

MODEL_ONLY = r"""
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from geoseg.runtime import bound_malloc
bound_malloc()
from geoseg.infer.predictor import Predictor, normalize
from geoseg.io.read import RasterSource
from geoseg.models import load_checkpoint
from geoseg.tiling import make_grid
src, model = sys.argv[1], sys.argv[2]
loaded = load_checkpoint(model)
card = loaded.card
pred = Predictor(loaded.model, card, device="cpu")
pool = ThreadPoolExecutor(pred.workers)
elapsed = 0.0
tiles = 0
def run(batches):
    # The predictor's workers run at once, as in the pipeline; only the network is timed.
    global elapsed, tiles
    t0 = time.perf_counter()
    for _ in pool.map(pred, batches):
        pass
    elapsed += time.perf_counter() - t0
    tiles += sum(len(b) for b in batches)
with RasterSource(src) as r:
    grid = make_grid(r.spec.height, r.spec.width, tile=card.tile_size, overlap=card.overlap,
                     stride=card.stride)
    batch, batches = [], []
    for t in grid:
        d, v = r.read(t.window)
        batch.append(normalize(d, v, card))
        if len(batch) == pred.batch_size:
            batches.append(np.stack(batch)); batch = []
        if len(batches) == 64:  # long runs: the workers rarely wait for each other
            run(batches); batches = []
    if batch:
        batches.append(np.stack(batch))
    if batches:
        run(batches)
print(json.dumps({"seconds": elapsed, "tiles": tiles}))
"""

END_TO_END = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from geoseg.runtime import bound_malloc
bound_malloc()
from geoseg.models import load_checkpoint
from geoseg.pipeline import PredictConfig, run_scene
src, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
loaded = load_checkpoint(model, lazy=True)  # as the CLI: a cached ONNX export needs no torch
t1 = time.perf_counter()
stats = run_scene(src, out, loaded, PredictConfig(device="cpu", overwrite=True))
t2 = time.perf_counter()
print(json.dumps({"seconds": t2 - t1, "startup": t1 - t0, "peak_mb": stats.peak_rss_mb,
                  "tiles": stats.tiles, "km2": stats.area_km2, "pixels": stats.pixels}))
"""


def make_model(workdir: Path, arch: str, encoder: str | None) -> Path:
    import torch

    from geoseg.models import ModelCard, build_model, save_checkpoint
    from geoseg.models.registry import architecture_stride

    path = workdir / f"model-{arch}-{encoder}"
    if path.exists():
        return path
    card = ModelCard.from_dict(
        {
            "name": f"bench-{arch}",
            "architecture": arch,
            "encoder": encoder,
            "bands": ["red", "green", "blue"],
            "classes": [
                {"id": i, "name": n, "color": c}
                for i, (n, c) in enumerate(
                    [
                        ("background", "#000000"),
                        ("building", "#e41a1c"),
                        ("vegetation", "#4daf4a"),
                        ("cropland", "#ffd92f"),
                    ]
                )
            ],
            "stride": architecture_stride(arch, encoder),
            "tile_size": 512,
            "overlap": 64,
            "mean": [0.45, 0.45, 0.45],
            "std": [0.25, 0.25, 0.25],
        }
    )
    torch.manual_seed(0)
    return save_checkpoint(build_model(card), card, path)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="4096,16384,32768")
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="tu-efficientnet_lite0")
    ap.add_argument(
        "--model",
        default="default",
        help="checkpoint directory, bundled model name, or 'random' (random weights, --arch/--encoder)",
    )
    ap.add_argument("--workdir", default="/tmp/geoseg-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    from geoseg.models.checkpoint import load_card, resolve_model_path

    model = (
        make_model(work, args.arch, args.encoder)
        if args.model == "random"
        else resolve_model_path(args.model)
    )
    pixel = load_card(model).pixel_size_m or 0.5
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        src = make_raster(work / f"scene-{size}-{pixel:g}m.tif", size, pixel_size=pixel)
        mo = run_json(MODEL_ONLY, src, model)
        e2e = run_json(END_TO_END, src, model, work / f"classes-{size}.tif")
        mpx = size * size / 1e6
        rows.append(
            (
                size,
                mo["seconds"],
                e2e["seconds"],
                e2e["seconds"] / mo["seconds"],
                e2e["startup"],
                (e2e["seconds"] + e2e["startup"]) / mo["seconds"],
                mpx / e2e["seconds"],
                mpx / e2e["seconds"] * 0.25 * 3600,  # km² of 0.5 m pixels per hour
                e2e["peak_mb"],
                e2e["tiles"],
            )
        )
        print(f"# {size}: done at {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)
    print(f"model: {args.model} ({model}); pixel {pixel:g} m; CPU threads: all")
    print(
        "| size | tiles | model-only s | end-to-end s | e2e / model | start-up s "
        "| (e2e + start-up) / model | Mpx/s (e2e) | km²/h at 0.5 m | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, mo, e2e, ratio, start, ratio_all, mpxs, kmh, peak, tiles in rows:
        print(
            f"| {size}² | {tiles} | {mo:.1f} | {e2e:.1f} | {ratio:.3f} | {start:.1f} | "
            f"{ratio_all:.3f} | {mpxs:.2f} | {kmh:.0f} | {peak:.0f} |"
        )
    if len(rows) > 1:
        print(f"peak RSS largest / smallest: {rows[-1][8] / rows[0][8]:.3f}")


if __name__ == "__main__":
    main()
