"""Compare two models scored on the same held-out images: IoU differences with intervals.

Reads two ``heldout.json`` files of ``evaluate_heldout.py`` (or the folders holding them),
and for every source and class both scored prints each model's pooled IoU, their
difference A - B, and the 95 % interval of that difference from a paired bootstrap over
the images (``geoseg.metrics.image_bootstrap_iou_difference``: both models pooled over the
same resampled images). An interval that holds 0 means these images do not tell the two
models apart on that class.

Usage::

    python examples/bundled/compare_heldout.py runs/eval-a runs/eval-b
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from geoseg.metrics import image_bootstrap_iou_difference


def _load(path: Path) -> dict:
    """A ``heldout.json``; each source's image rows from its ``metrics.json`` if it lacks them."""
    file = path / "heldout.json" if path.is_dir() else path
    data = json.loads(file.read_text())
    for source, r in data.items():
        if "image_scores" not in r:  # written before evaluate_heldout.py kept them
            r["image_scores"] = json.loads((file.parent / source / "metrics.json").read_text())[
                "images"
            ]
    return data


def compare(a: dict, b: dict) -> list[dict]:
    """One row per source and class that both evaluations scored."""
    rows = []
    for source in a:
        if source not in b:
            continue
        ra, rb = a[source], b[source]
        names_a = [Path(im["path"]).name for im in ra["image_scores"]]
        names_b = [Path(im["path"]).name for im in rb["image_scores"]]
        if names_a != names_b:
            raise SystemExit(f"{source}: the two evaluations scored different images")
        classes = list(ra["pixel"]["classes"])
        if classes != list(rb["pixel"]["classes"]):
            raise SystemExit(f"{source}: the two models have different classes")
        scored = [
            c
            for c in classes
            if c in ra["labelled_classes"]
            and ra["pixel"]["classes"][c].get("recall") is not None
            and rb["pixel"]["classes"][c].get("recall") is not None
        ]
        covered = [c in scored for c in classes]
        mats_a = [np.asarray(im["confusion"]) for im in ra["image_scores"]]
        mats_b = [np.asarray(im["confusion"]) for im in rb["image_scores"]]
        spans = image_bootstrap_iou_difference(mats_a, mats_b, covered)
        for c, span in zip(classes, spans, strict=True):
            if c not in scored:
                continue
            iou_a, iou_b = ra["pixel"]["classes"][c]["iou"], rb["pixel"]["classes"][c]["iou"]
            rows.append(
                {
                    "source": source,
                    "class": c,
                    "images": len(mats_a),
                    "a": iou_a,
                    "b": iou_b,
                    "difference": iou_a - iou_b,
                    "interval_95": list(span) if span is not None else None,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="heldout.json (or its folder) of model A")
    ap.add_argument("b", type=Path, help="heldout.json (or its folder) of model B")
    args = ap.parse_args()
    rows = compare(_load(args.a), _load(args.b))
    for r in rows:
        span = r["interval_95"]
        told = "" if span is None else ("  (not told apart)" if span[0] <= 0 <= span[1] else "")
        shown = "-" if span is None else f"[{span[0]:+.3f}, {span[1]:+.3f}]"
        print(
            f"{r['source']:<14} {r['class']:<11} {r['images']:>3} images  A {r['a']:.3f}  "
            f"B {r['b']:.3f}  A-B {r['difference']:+.3f} {shown}{told}"
        )


if __name__ == "__main__":
    main()
