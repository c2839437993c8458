"""Training throughput: ``geoseg train`` beside a bare forward+backward+AdamW loop, in one run.

Both run the same network on the same chips (the run's first training chips, batch by
batch), on this machine's CPU threads; the figure is training pixels per second (chips x
chip edge² per second), timed from the end of the first step to the end of the last, so
set-up (indexing, band statistics, reading the images into memory) is left out and
reported apart.  ``geoseg train`` is measured with the chip cache (the default) and, with
``--uncached``, reading each chip through torchgeo as before.

Usage (from the repository root, with ../shared/data present)::

    python benchmarks/bench_training.py --sources dubai,agoro-fields --steps 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _config(path: Path, sources: list[str], chip: int | None, batch: int | None, steps: int):
    from geoseg.training.config import TrainConfig, ValidationConfig

    cfg = TrainConfig.from_yaml(path.read_text(), base_dir=path.parent)
    kept = tuple(s for s in cfg.sources if not sources or s.name in sources)
    if not kept:
        raise SystemExit(f"no source of {path} is named in --sources {sources}")
    batch = batch or cfg.batch_size
    return replace(
        cfg,
        sources=kept,
        chip_size=chip or cfg.chip_size,
        batch_size=batch,
        epochs=1,
        samples_per_epoch=steps * batch,
        validation=ValidationConfig(fraction=0.0),
        encoder_weights=None,
        init_weights=None,
        stats_chips=8,
        overwrite=True,
    )


def time_train(cfg, cache: bool, out: Path) -> tuple[float, float, int]:
    """(training Mpx/s, set-up seconds, steps timed) of ``geoseg train``'s loop."""
    from geoseg.training.loop import train

    marks: list[float] = []
    t0 = time.perf_counter()

    def on_event(event) -> None:
        if event.kind == "step":
            marks.append(time.perf_counter())

    train(replace(cfg, cache=cache, output=out), on_event)
    steps = len(marks) - 1
    px = steps * cfg.batch_size * cfg.chip_size**2
    return px / (marks[-1] - marks[0]) / 1e6, marks[0] - t0, steps


def time_bare(cfg, out: Path) -> float:
    """Mpx/s of forward + loss + backward + AdamW on the run's own chips, nothing else."""
    import torch
    from torch.utils.data import DataLoader

    from geoseg.models.checkpoint import load_checkpoint
    from geoseg.training.data import ChipCache, ChipDataset, allowed_values, build_training_data

    data = build_training_data(cfg)
    cache = ChipCache(data, allowed_values(data))
    chips = ChipDataset(data, data.train_queries(0), cache)
    batches = list(DataLoader(chips, batch_size=cfg.batch_size, drop_last=True))
    model = load_checkpoint(out / "last").model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    xs = [
        ((b["image"] / 255.0 - 0.45) / 0.2).contiguous(memory_format=torch.channels_last)
        for b in batches
    ]
    ys = [b["mask"].clamp(max=len(cfg.classes) - 1) for b in batches]
    marks = []
    for x, y in zip(xs, ys, strict=True):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        marks.append(time.perf_counter())
    steps = len(marks) - 1
    return steps * cfg.batch_size * cfg.chip_size**2 / (marks[-1] - marks[0]) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "examples/bundled/train.yaml")
    ap.add_argument("--sources", default="dubai,agoro-fields", help="comma list ('' for all)")
    ap.add_argument("--chip", type=int, default=None, help="chip edge (default: the config's)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--uncached", action="store_true", help="also time reading chip by chip")
    args = ap.parse_args()
    import torch

    sources = [s for s in args.sources.split(",") if s]
    cfg = _config(args.config, sources, args.chip, args.batch, args.steps)
    print(
        f"sources {[s.name for s in cfg.sources]}, {args.steps} steps of {cfg.batch_size} x "
        f"{cfg.chip_size}² chips, {cfg.architecture}/{cfg.encoder}, "
        f"{torch.get_num_threads()} torch threads",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-train-") as tmp:
        out = Path(tmp) / "run"
        cached, setup, steps = time_train(cfg, True, out)
        print(
            f"geoseg train, cached chips:   {cached:.3f} Mpx/s ({steps} steps; set-up {setup:.1f} s)"
        )
        bare = time_bare(cfg, out)
        print(f"bare fwd+bwd+AdamW loop:      {bare:.3f} Mpx/s")
        if args.uncached:
            slow, setup2, _ = time_train(cfg, False, Path(tmp) / "run2")
            print(f"geoseg train, chip by chip:   {slow:.3f} Mpx/s (set-up {setup2:.1f} s)")
            print(f"cache speed-up: {cached / slow:.2f}x")
        print(f"geoseg train / bare loop: {cached / bare:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
