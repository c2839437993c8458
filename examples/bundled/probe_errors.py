"""What kind of errors the bundled model makes, and whether its confidence tells a user so.

Three probes on the real images its training run held out (the model card's files of Dubai
and agoro fields, and every SpaceNet Rio tile), on the class rasters, without retraining:

1. **Edges or regions**: of the Dubai building and vegetation errors, how many pixels lie
   within 1 or 2 pixels of the other side's outline (a roof drawn a pixel too wide) and what
   the IoU would be if those were forgiven. What is left are whole regions called wrong.
2. **Class priors**: the probabilities multiplied by a per-class factor before the argmax
   (a background prior of 1.5 makes every other class need 1.5x more evidence). A model
   that over-paints because it is biased, not because it is wrong, gains here.
3. **Confidence as a warning**: per image, the share of pixels whose most probable class
   has a probability under ``--threshold`` (the maximum softmax probability, the usual
   baseline signal of unfamiliar input), on the held-out images and on the unlabelled
   rasters of the shared robustness corpus (Flemish orthophotos, the DeepForest/NEON
   rasters). Useful as a warning only if it is high where the model fails and low where it
   works.

Usage (from the repository root; about 3 minutes on 2 cores)::

    python examples/bundled/probe_errors.py geoseg/models/bundled/default runs/probe-errors
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
from probe_inference import SHARED, probabilities, truth

RASTERS = SHARED.parent / "rasters"
PRIORS = ([1, 1, 1, 1], [1.25, 1, 1, 1], [1.5, 1, 1, 1], [2, 1, 1, 1], [3, 1, 1, 1])


@functools.cache
def _fields():  # agoro's cropland polygons, read once
    import geopandas as gpd

    return gpd.read_file(SHARED / "agoro-fields" / "fields.gpkg", layer="fields")


def labels(kind: str, image: Path) -> np.ndarray:
    """Class ids on the image's grid, 255 where unlabelled (agoro: cropland or not)."""
    if kind != "agoro-fields":
        return truth(kind, image)[0]
    import rasterio
    from rasterio.features import rasterize

    with rasterio.open(image) as ds:
        frame = _fields().to_crs(ds.crs)
        inside = rasterize(frame.geometry, out_shape=(ds.height, ds.width), transform=ds.transform)
    return np.where(inside > 0, 3, 0).astype(np.uint8)


#: Classes each source's labels score: Dubai building and vegetation, Rio building, agoro cropland.
SCORED = {"dubai": (1, 2), "spacenet-rio": (1,), "agoro-fields": (3,)}


def iou_counts(kind: str, t: np.ndarray, pred: np.ndarray) -> dict[int, np.ndarray]:
    """Per scored class: [intersection, union] over the labelled pixels (Rio: building or not)."""
    known = t != 255
    return {
        k: np.array(
            [((pred == k) & (t == k) & known).sum(), (((pred == k) | (t == k)) & known).sum()]
        )
        for k in SCORED[kind]
    }


def edge_errors(t: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """tp, fp, fn, fp and fn within 1 px and within 2 px of the other side's outline."""
    from scipy import ndimage as ndi

    known = t != 255
    true, got = (t == k) & known, (pred == k) & known
    d_true = ndi.distance_transform_edt(~true)
    d_got = ndi.distance_transform_edt(~got)
    fp, fn = got & ~true, true & ~got
    return np.array(
        [
            (got & true).sum(),
            fp.sum(),
            fn.sum(),
            (fp & (d_true <= 1.5)).sum() + (fn & (d_got <= 1.5)).sum(),
            (fp & (d_true <= 2.9)).sum() + (fn & (d_got <= 2.9)).sum(),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--threshold", type=float, default=0.6)
    args = ap.parse_args()
    card = json.loads((args.model / "model_card.json").read_text())
    names = [c["name"] for c in card["classes"]]
    held = card["metrics"]["held_out_real"]
    images = [(kind, SHARED / kind / "images" / f) for kind in SCORED for f in held[kind]["images"]]
    corpus = [
        ("flanders orthophotos", p, "EPSG:31370")
        for p in sorted((RASTERS / "orthoseg-flanders-ortho" / "tiles_0p5m").glob("*/*.jpg"))
    ] + [
        ("deepforest/neon corpus", p, None)
        for p in sorted((RASTERS / "deepforest-neon").glob("*.tif"))
    ]

    edges = {k: np.zeros(5, np.int64) for k in (1, 2)}
    priors: dict[int, dict[tuple[str, int], np.ndarray]] = {i: {} for i in range(len(PRIORS))}
    shares: list[dict] = []
    for kind, image in images:
        p = probabilities(image, args.model, args.out / kind)
        valid = ~np.isnan(p[0])
        q = np.nan_to_num(p)
        t = labels(kind, image)
        t[~valid] = 255
        pred = q.argmax(0)
        if kind == "dubai":
            for k in edges:
                edges[k] += edge_errors(t, pred, k)
        for i, w in enumerate(PRIORS):
            got = (q * np.asarray(w, np.float32)[:, None, None]).argmax(0)
            for k, c in iou_counts(kind, t, got).items():
                priors[i][(kind, k)] = priors[i].get((kind, k), 0) + c
        counts = iou_counts(kind, t, pred)
        top = q.max(0)[valid]
        shares.append(
            {
                "group": kind,
                "image": image.name,
                "low_share": float((top < args.threshold).mean()),
                "iou": {names[k]: float(c[0] / c[1]) if c[1] else None for k, c in counts.items()},
            }
        )
    for group, image, crs in corpus:
        p = probabilities(image, args.model, args.out / "corpus", assume_crs=crs)
        top = np.nan_to_num(p).max(0)[~np.isnan(p[0])]
        shares.append(
            {"group": group, "image": image.name, "low_share": float((top < args.threshold).mean())}
        )

    report: dict = {"edges": {}, "priors": {}, "confidence": shares}
    print("1. Dubai errors near the other side's outline (class rasters)")
    for k, (tp, fp, fn, near1, near2) in edges.items():
        row = {
            "iou": tp / (tp + fp + fn),
            "errors_within_1px": near1 / (fp + fn),
            "errors_within_2px": near2 / (fp + fn),
            "iou_forgiving_1px": tp / (tp + fp + fn - near1),
            "iou_forgiving_2px": tp / (tp + fp + fn - near2),
        }
        report["edges"][names[k]] = row
        print(f"  {names[k]:<10}", "  ".join(f"{a} {v:.3f}" for a, v in row.items()))
    print("2. per-source IoU with class priors (background factor first)")
    for i, w in enumerate(PRIORS):
        row = {f"{kind} {names[k]}": float(c[0] / c[1]) for (kind, k), c in priors[i].items()}
        report["priors"][str(w)] = row
        print(f"  {w!s:<22}", "  ".join(f"{a} {v:.3f}" for a, v in row.items()))
    print(f"3. share of pixels whose top class probability is under {args.threshold:g}")
    for group in dict.fromkeys(s["group"] for s in shares):
        vals = sorted(s["low_share"] for s in shares if s["group"] == group)
        print(
            f"  {group:<24} {len(vals):>2} images: min {vals[0]:.3f}  "
            f"median {vals[len(vals) // 2]:.3f}  max {vals[-1]:.3f}"
        )
    for kind, cls in (("dubai", "building"), ("spacenet-rio", "building")):
        pairs = [
            (s["low_share"], s["iou"][cls])
            for s in shares
            if s["group"] == kind and s["iou"].get(cls) is not None
        ]
        x, y = (np.argsort(np.argsort(v)) for v in zip(*pairs, strict=True))
        rho = float(np.corrcoef(x, y)[0, 1])
        report.setdefault("rank_correlation", {})[f"{kind} {cls}"] = rho
        print(f"  {kind} images: rank correlation of that share with {cls} IoU {rho:+.2f}")
    (args.out / "probe_errors.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
