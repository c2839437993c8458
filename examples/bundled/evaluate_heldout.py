"""Score a model on the real images its training run held out, with ``geoseg evaluate``.

The held-out files of each source are read from the model card's provenance (the training
run's file split), and each real source is evaluated through ``geoseg evaluate``, i.e. the same
tiled inference users run, against its own labels and only for the classes it labels:

* dubai: label rasters (building, vegetation; cropland declared absent, so cropland
  predictions count as errors);
* agoro-fields: cropland polygons;
* spacenet-rio: building footprints; every tile when the model was not trained on the set.

Scores come through the user's path by default: the polygons ``geoseg predict IMG -o X.gpkg``
writes, rasterized back onto the image for pixel metrics (``--raster`` scores the class
rasters instead); ``--tta flips|d4`` adds test-time augmentation; ``--precision int8``
runs the checkpoint's int8 graph; ``--split-from CHECKPOINT`` scores on another card's
held-out files (a fine-tune of the bundled model on the bundled model's split);
``--trained-files`` scores the files the run trained on instead (how well the model fits
its own training images: the gap to the held-out scores tells underfitting from a failure
to generalise; SpaceNet Rio is then left out unless the run trained on it).

Usage::

    python examples/bundled/evaluate_heldout.py runs/bundled/model runs/bundled-eval [--tta flips]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "segmentation"


def trained_files(source: dict, held_out: list[str], shared: Path) -> list[str]:
    """The files of a card's source that its run trained on: the source's folder minus the
    held-out files the card names, checked against the number of files the card counts."""
    out_of_training = {Path(f).name for f in held_out}
    trained = sorted(
        str(f)
        for f in (shared / source["name"] / "images").glob("*.tif")
        if f.name not in out_of_training
    )
    if len(trained) + len(out_of_training) != source.get("files"):
        raise SystemExit(
            f"{source['name']}: the card counts {source.get('files')} files, the folder holds "
            f"{len(trained) + len(out_of_training)}: not the data the run trained on"
        )
    return trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tta", default="none", choices=["none", "flips", "d4"])
    ap.add_argument(
        "--no-separate", action="store_true", help="ignore a contact output (touching buildings)"
    )
    ap.add_argument("--raster", action="store_true", help="score class rasters, not polygons")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8", "auto"])
    ap.add_argument("--sources", default="", help="comma list of sources (default: all)")
    ap.add_argument(
        "--split-from",
        type=Path,
        default=None,
        help="take the held-out files from this checkpoint's card (e.g. the bundled model, to "
        "score a fine-tune of it on the same files)",
    )
    ap.add_argument(
        "--trained-files",
        action="store_true",
        help="score the files the run trained on (its fit), not the held-out ones",
    )
    args = ap.parse_args()
    model, out = args.model, args.out
    card = json.loads(((args.split_from or model) / "model_card.json").read_text())
    held: dict[str, list[str]] = {}
    for src in card["provenance"]["sources"]:
        for part in src.get("parts", []):
            held.setdefault(src["name"], []).extend(part["val_files"])
        if "parts" not in src:  # cards before the per-part provenance
            held[src["name"]] = list(src.get("held_out", []))
        if args.trained_files and (SHARED / src["name"] / "images").is_dir():
            held[src["name"]] = trained_files(src, held.get(src["name"], []), SHARED)
    if "spacenet-rio" not in held and not args.trained_files:
        held["spacenet-rio"] = sorted(
            str(p) for p in (SHARED / "spacenet-rio" / "images").glob("*.tif")
        )
        if args.split_from:  # never score a model on images it trained on
            own = json.loads((model / "model_card.json").read_text())
            seen = {
                Path(f).name
                for src in own["provenance"]["sources"]
                for f in (src.get("images") or [])
            }
            held["spacenet-rio"] = [f for f in held["spacenet-rio"] if Path(f).name not in seen]
    for name, files in held.items():
        folder = SHARED / name / "images"
        held[name] = [f if Path(f).is_file() else str(folder / Path(f).name) for f in files]
    jobs = {
        "dubai": (
            [SHARED / "dubai" / "masks" / Path(f).name for f in held.get("dubai", [])],
            [
                "--class-map",
                "0=ignore,1=building,2=background,3=background,4=vegetation,5=background",
                "--labelled-classes",
                "building,vegetation",
                "--absent-classes",
                "cropland",
            ],
        ),
        "agoro-fields": (
            [SHARED / "agoro-fields" / "fields.gpkg"],
            ["--label-field", "class", "--labelled-classes", "cropland"],
        ),
        "spacenet-rio": (
            [SHARED / "spacenet-rio" / "buildings.gpkg"],
            ["--labelled-classes", "building"],
        ),
    }
    results = {}
    wanted = [s for s in args.sources.split(",") if s]
    for name, (labels, extra) in jobs.items():
        if wanted and name not in wanted:
            continue
        images = [str(Path(f).resolve()) for f in held.get(name, [])]
        if not images:
            continue
        cmd = [
            sys.executable,
            "-m",
            "geoseg",
            "-q",
            "evaluate",
            "--model",
            str(model),
            *[a for i in images for a in ("--images", i)],
            *[a for lab in labels for a in ("--labels", str(lab))],
            "-o",
            str(out / name),
            "--overwrite",
            "--tta",
            args.tta,
            "--precision",
            args.precision,
            *([] if args.raster else ["--through-polygons"]),
            *(["--no-separate"] if args.no_separate else []),
            *extra,
        ]
        subprocess.run(cmd, check=True)
        results[name] = json.loads((out / name / "metrics.json").read_text())
        results[name]["image_scores"] = results[name]["images"]  # per image, with confusion
        results[name]["images"] = [Path(i).name for i in images]
        results[name]["scored"] = {
            "through_polygons": not args.raster,
            "tta": args.tta,
            "separate": not args.no_separate,
            "precision": args.precision,
        }
    (out / "heldout.json").write_text(json.dumps(results, indent=1))
    for name, r in results.items():
        ious = {
            c: m.get("iou") for c, m in r["pixel"]["classes"].items() if c in r["labelled_classes"]
        }
        objs = {c: (o["precision"], o["recall"], o["f1"]) for c, o in r["objects"].items()}
        spans = r.get("pixel_interval", {}).get("classes", {})
        ivs = {c: spans.get(c) for c in ious if spans.get(c)}
        print(name, "IoU", ious, "95 % intervals", ivs, "objects P/R/F1", objs)


if __name__ == "__main__":
    main()
