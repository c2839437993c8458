"""Two inference-side probes on the held-out images, without retraining.

1. **Scales**: the network run at several pixel sizes (a copy of the checkpoint whose card
   states another ``pixel_size_m``, so ``predict`` resamples to it and back), each alone and
   with the probabilities of two or three scales averaged (multi-scale test-time fusion).
2. **Splitting merged roofs by probability valleys**: where the building probability dips
   between two confident cores, the roof is cut. Cores are the building pixels at or above
   ``--core`` (opened by one pixel); every building pixel joins its nearest core (a
   distance-transform watershed), and a one-pixel line is carved where two cores' pixels
   meet. Building pixels far from any core keep their own component. A local variant
   ("local R m D") carves the pixels that lie lower by more than D than the building
   probability on both sides within R metres.

Scores are on the class rasters (not through the polygon clean-up) with ``geoseg``'s own
object matching (one-to-one at IoU >= 0.5 on polygons traced from the class raster; objects
under the card's building ``min_area_m2`` left out, as the vectorizer drops them). Dubai: the
model card's held-out files; SpaceNet Rio: every tile (never trained on).

Usage (from the repository root)::

    python examples/bundled/probe_inference.py geoseg/models/bundled/default runs/probe \
        [--scales 1.0,0.75,1.5,2.0] [--core 0.7,0.8]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import shutil
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "segmentation"
#: Dubai mask ids -> (background 0, building 1, vegetation 2); 0 is unlabelled.
DUBAI = {1: 1, 2: 0, 3: 0, 4: 2, 5: 0}


def scaled_copy(model: Path, px: float, out: Path) -> Path:
    """A copy of checkpoint ``model`` whose card states ``px`` metres per pixel."""
    dst = out / f"model_{px:g}m"
    if not dst.exists():
        shutil.copytree(model, dst)
        card = json.loads((dst / "model_card.json").read_text())
        card["pixel_size_m"] = px
        (dst / "model_card.json").write_text(json.dumps(card, indent=1))
    return dst


def probabilities(image: Path, model: Path, out: Path, assume_crs: str | None = None) -> np.ndarray:
    """float32 ``(classes, H, W)`` probabilities of ``model`` on ``image``'s own grid."""
    import rasterio

    import geoseg

    out.mkdir(parents=True, exist_ok=True)
    probs = out / f"{image.stem}_probs.tif"
    if not probs.exists():
        geoseg.predict(
            str(image),
            str(out / f"{image.stem}_classes.tif"),
            str(model),
            probabilities=str(probs),
            precision="fp32",
            resample="force",
            assume_crs=assume_crs,
            overwrite=True,
        )
    with rasterio.open(probs) as ds:
        raw = ds.read()
    p = raw.astype(np.float32) / 254.0
    p[:, raw[0] == 255] = np.nan
    return p


@functools.cache
def _rio_footprints():  # a GeoDataFrame, read once for all tiles
    import geopandas as gpd

    return gpd.read_file(SHARED / "spacenet-rio" / "buildings.gpkg")


def truth(kind: str, image: Path) -> tuple[np.ndarray, np.ndarray]:
    """Class ids (255: unlabelled) and building instance ids (0: none) on the image's grid."""
    import rasterio
    from rasterio.features import rasterize
    from scipy import ndimage as ndi

    if kind == "dubai":
        with rasterio.open(SHARED / "dubai" / "masks" / image.name) as ds:
            m = ds.read(1)
        t = np.full(m.shape, 255, np.uint8)
        for k, v in DUBAI.items():
            t[m == k] = v
        return t, ndi.label(t == 1)[0]
    with rasterio.open(image) as ds:
        frame = _rio_footprints().to_crs(ds.crs)
        ids = rasterize(
            [(g, i + 1) for i, g in enumerate(frame.geometry)],
            out_shape=(ds.height, ds.width),
            transform=ds.transform,
            fill=0,
        ).astype(np.int64)
    _, ids = np.unique(ids, return_inverse=True)
    ids = ids.reshape(ds.height, ds.width)
    return (ids > 0).astype(np.uint8), ids


def split_by_valleys(building: np.ndarray, mask: np.ndarray, core: float) -> np.ndarray:
    """``mask`` less a one-pixel line wherever pixels of two grown cores meet."""
    from scipy import ndimage as ndi

    cores, n = ndi.label(ndi.binary_opening(mask & (building >= core)))
    if n < 2:
        return mask
    _, (ii, jj) = ndi.distance_transform_edt(cores == 0, return_indices=True)
    grown = np.where(mask, cores[ii, jj], 0)
    cut = np.zeros(mask.shape, bool)
    cut[:, :-1] |= (grown[:, :-1] > 0) & (grown[:, 1:] > 0) & (grown[:, :-1] != grown[:, 1:])
    cut[:-1] |= (grown[:-1] > 0) & (grown[1:] > 0) & (grown[:-1] != grown[1:])
    return mask & ~cut


def carve_local_valleys(
    building: np.ndarray, mask: np.ndarray, radius_px: int, depth: float
) -> np.ndarray:
    """``mask`` less the pixels lower by more than ``depth`` than the building probability on
    both sides (the highest within ``radius_px``) along a row, a column or a diagonal."""
    h, w = building.shape

    def side_max(dy: int, dx: int) -> np.ndarray:
        out = np.full(building.shape, -1.0, np.float32)
        for k in range(1, radius_px + 1):
            sy, sx = dy * k, dx * k
            src = building[max(0, sy) : h + min(0, sy), max(0, sx) : w + min(0, sx)]
            dst = out[max(0, -sy) : h + min(0, -sy), max(0, -sx) : w + min(0, -sx)]
            np.maximum(dst, src, out=dst)
        return out

    valley = np.zeros(mask.shape, bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        valley |= np.minimum(side_max(dy, dx), side_max(-dy, -dx)) - building > depth
    return mask & ~valley


def polygons(instances: np.ndarray, min_px: float) -> list:
    """One shapely polygon (in pixel units) per instance id of at least ``min_px`` pixels."""
    import shapely
    from rasterio.features import shapes

    out: dict[int, list] = {}
    for geom, value in shapes(instances.astype(np.int32), mask=instances > 0):
        out.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    merged = [shapely.union_all(parts) for parts in out.values()]
    return [g for g in merged if g.area >= min_px]


def main() -> None:
    import rasterio
    from scipy import ndimage as ndi

    from geoseg.evaluate import object_metrics
    from geoseg.metrics import ConfusionMatrix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scales", default="1.0,0.75,1.5,2.0", help="pixel sizes in metres")
    ap.add_argument("--core", default="0.7,0.8", help="core thresholds of the valley split")
    args = ap.parse_args()
    card = json.loads((args.model / "model_card.json").read_text())
    names = [c["name"] for c in card["classes"]]
    native = float(card["pixel_size_m"])
    scales = [float(s) for s in args.scales.split(",")]
    if native not in scales:
        scales.insert(0, native)
    cores = [float(c) for c in args.core.split(",")]
    min_m2 = float(card.get("postprocess", {}).get("building", {}).get("min_area_m2", 0.0))
    held = sorted(
        {
            Path(f).name
            for s in card["provenance"]["sources"]
            if s["name"] == "dubai"
            for f in s.get("held_out", [])
        }
    )
    images = [("dubai", SHARED / "dubai" / "images" / f) for f in held] + [
        ("spacenet-rio", p) for p in sorted((SHARED / "spacenet-rio" / "images").glob("*.tif"))
    ]
    models = {px: scaled_copy(args.model, px, args.out) for px in scales}
    combos = [(px,) for px in scales] + [
        c for r in (2, 3) for c in itertools.combinations(scales, r) if native in c
    ]
    splits = ["none", *[f"core {c:g}" for c in cores], "local 4 m 0.1", "local 6 m 0.05"]
    cms: dict[tuple[str, tuple[float, ...]], ConfusionMatrix] = {}
    objs: dict[tuple[str, str], tuple[list, list]] = {}
    for kind, image in images:
        t, true_ids = truth(kind, image)
        # Dubai labels buildings and vegetation (cropland declared absent); Rio buildings only
        labelled = [True, True, kind == "dubai", kind == "dubai"]
        probs = {px: probabilities(image, m, args.out / f"p_{px:g}m") for px, m in models.items()}
        for combo in combos:
            p = np.mean([probs[px] for px in combo], axis=0)
            valid = ~np.isnan(p[0])
            pred = np.where(valid, np.nan_to_num(p).argmax(0), 255).astype(np.uint8)
            cm = cms.setdefault((kind, combo), ConfusionMatrix(names))
            cm.update(t, pred, labelled=labelled)
        p = np.nan_to_num(probs[native])
        mask = (p.argmax(0) == 1) & ~np.isnan(probs[native][0])
        with rasterio.open(image) as ds:
            px_area = abs(ds.transform.a * ds.transform.e)
            if ds.crs.is_geographic:  # square metres of a pixel at the image's centre
                lat = np.radians((ds.bounds.bottom + ds.bounds.top) / 2)
                px_area *= 111_320.0**2 * np.cos(lat)
        px_m = float(np.sqrt(px_area))
        for name in splits:
            if name == "none":
                cut = mask
            elif name.startswith("core"):
                cut = split_by_valleys(p[1], mask, float(name[5:]))
            else:
                _, metres, _, depth = name.split()
                radius = max(1, round(float(metres) / px_m))
                cut = carve_local_valleys(p[1], mask, radius, float(depth))
            pred_polys = polygons(ndi.label(cut)[0], min_m2 / px_area)
            true_polys = polygons(true_ids, 0)
            acc = objs.setdefault((kind, name), ([], [], np.zeros(2, np.int64)))
            acc[0].append(pred_polys)  # matched image by image (pixel coordinates)
            acc[1].append(true_polys)
            known = t != 255
            acc[2][:] += ((cut & (t == 1) & known).sum(), ((cut | (t == 1)) & known).sum())
    report: dict[str, dict] = {"scales": {}, "split": {}}
    print("pixel IoU (class rasters) by pixel size; fused = mean of the probabilities")
    for (kind, combo), cm in cms.items():
        m = {c.name: c.iou for c in cm.metrics().classes if c.iou is not None}
        key = f"{kind} " + "+".join(f"{px:g} m" for px in combo)
        report["scales"][key] = m
        print(f"  {key:<34}", "  ".join(f"{k} {v:.3f}" for k, v in m.items()))
    print("building objects at IoU >= 0.5 (precision / recall / F1, predicted objects)")
    for (kind, name), (preds, trues, iou) in objs.items():
        tp = fp = fn = 0
        for pp, tt in zip(preds, trues, strict=True):
            o = object_metrics("building", pp, tt)
            tp, fp, fn = tp + o.tp, fp + o.fp, fn + o.fn
        prec = tp / max(1, tp + fp)
        rec = tp / max(1, tp + fn)
        f1 = 2 * prec * rec / max(1e-12, prec + rec)
        key = f"{kind} {name}"
        building_iou = float(iou[0] / max(1, iou[1]))
        report["split"][key] = {"tp": tp, "fp": fp, "fn": fn, "f1": f1, "iou": building_iou}
        print(
            f"  {key:<24} {prec:.3f} / {rec:.3f} / {f1:.3f}  ({tp + fp} predicted; "
            f"building pixel IoU {building_iou:.3f})"
        )
    (args.out / "probe.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
