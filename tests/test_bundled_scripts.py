"""The pure parts of the bundled model's scripts (examples/bundled), on tiny arrays."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # package.py imports the training stack
BUNDLED = Path(__file__).resolve().parents[1] / "examples" / "bundled"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bundled_{name}", BUNDLED / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_valley_split_cuts_two_touching_roofs_and_leaves_one_roof_whole():
    probe = _load("probe_inference")
    from scipy import ndimage as ndi

    b = np.zeros((20, 30), np.float32)
    b[4:16, 3:13] = 0.95
    b[4:16, 13:15] = 0.55  # the gap between two houses: still building, less sure
    b[4:16, 15:26] = 0.9
    mask = b > 0.5
    assert ndi.label(mask)[1] == 1  # one merged block before the split
    cut = probe.split_by_valleys(b, mask, 0.7)
    labels, n = ndi.label(cut)
    assert n == 2
    assert (mask & ~cut).sum() == 12  # a one-pixel line, one roof row high
    assert labels[10, 5] != labels[10, 20]
    whole = np.where(mask[:, :13], 0.95, 0.0).astype(np.float32)
    assert (probe.split_by_valleys(whole, whole > 0.5, 0.7) == (whole > 0.5)).all()


def test_held_out_metrics_keep_scored_classes_and_their_intervals():
    package = _load("package")
    heldout = {
        "dubai": {
            "images": ["a.tif", "b.tif"],
            "labelled_classes": ["building", "cropland"],
            "pixel": {
                "classes": {
                    "background": {"iou": 0.9, "dice": 0.95, "recall": 0.9},
                    "building": {"iou": 0.6, "dice": 0.75, "recall": 0.7},
                    "cropland": {"iou": 0.0, "dice": 0.0, "recall": None},  # declared absent
                }
            },
            "pixel_interval": {"classes": {"building": [0.5, 0.7], "cropland": None}},
            "objects": {"building": {"precision": 0.1, "recall": 0.2, "f1": 0.13, "tp": 3}},
        }
    }
    held = package.held_out_metrics(heldout)["dubai"]
    assert held["pixel_iou"] == {"building": 0.6}
    assert held["pixel_iou_interval_95"] == {"building": [0.5, 0.7]}
    assert held["objects"] == {"building": {"precision": 0.1, "recall": 0.2, "f1": 0.13}}
    del heldout["dubai"]["pixel_interval"]  # a heldout.json from before the intervals
    assert package.held_out_metrics(heldout)["dubai"]["pixel_iou_interval_95"] == {}


def _scored(images: list[tuple[str, list[list[int]]]]) -> dict:
    pooled = np.sum([np.asarray(m) for _, m in images], axis=0)
    tp = np.diag(pooled)
    iou = tp / (pooled.sum(0) + pooled.sum(1) - tp)
    return {
        "labelled_classes": ["building"],
        "pixel": {
            "classes": {
                "background": {"iou": float(iou[0]), "recall": 1.0},
                "building": {"iou": float(iou[1]), "recall": 1.0},
            }
        },
        "image_scores": [{"path": f"/x/{n}", "confusion": m} for n, m in images],
    }


def test_compare_heldout_pairs_images_and_refuses_other_images():
    compare = _load("compare_heldout").compare
    a = _scored([("1.tif", [[90, 10], [10, 90]]), ("2.tif", [[50, 20], [20, 10]])])
    b = _scored([("1.tif", [[85, 15], [15, 85]]), ("2.tif", [[45, 25], [25, 5]])])
    rows = compare({"dubai": a, "rio": a}, {"dubai": b})
    assert [(r["source"], r["class"]) for r in rows] == [("dubai", "building")]
    (row,) = rows
    iou_a, iou_b = (x["pixel"]["classes"]["building"]["iou"] for x in (a, b))
    assert row["difference"] == pytest.approx(iou_a - iou_b)
    lo, hi = row["interval_95"]
    assert 0 < lo <= row["difference"] <= hi  # better on both images: told apart
    other = _scored([("1.tif", [[90, 10], [10, 90]]), ("3.tif", [[50, 20], [20, 10]])])
    with pytest.raises(SystemExit, match="different images"):
        compare({"dubai": a}, {"dubai": other})


def test_trained_files_are_the_folder_minus_the_held_out_ones(tmp_path: Path):
    heldout = _load("evaluate_heldout")
    images = tmp_path / "dubai" / "images"
    images.mkdir(parents=True)
    for name in ("a.tif", "b.tif", "c.tif", "d.tif"):
        (images / name).write_bytes(b"")
    source = {"name": "dubai", "files": 4}
    got = heldout.trained_files(source, ["/elsewhere/b.tif", "d.tif"], tmp_path)
    assert [Path(f).name for f in got] == ["a.tif", "c.tif"]
    # a folder that is not the data the run counted is refused, not scored
    (images / "e.tif").write_bytes(b"")
    with pytest.raises(SystemExit, match="counts 4 files"):
        heldout.trained_files(source, ["b.tif", "d.tif"], tmp_path)


def test_edge_errors_tell_outlines_a_pixel_off_from_regions_called_wrong(monkeypatch):
    monkeypatch.syspath_prepend(str(BUNDLED))  # probe_errors imports probe_inference
    probe = _load("probe_errors")
    t = np.zeros((30, 30), np.uint8)
    t[5:15, 5:15] = 1  # a 10 x 10 roof
    t[0, :] = 255  # unlabelled: counts nowhere
    pred = np.zeros_like(t)
    pred[4:16, 4:16] = 1  # the roof drawn one pixel too wide on every side: 44 false pixels
    pred[22:25, 22:25] = 1  # and a 3 x 3 roof far from any true one
    pred[0, 0:5] = 1  # on unlabelled pixels: ignored
    tp, fp, fn, near1, near2 = probe.edge_errors(t, pred, 1)
    assert (tp, fp, fn) == (100, 44 + 9, 0)
    assert near1 == near2 == 44  # the outline errors; the far roof is a region error
    counts = probe.iou_counts("dubai", t, pred)
    assert counts[1].tolist() == [100, 153]
    assert set(counts) == {1, 2}


def test_wise_interpolates_a_fine_tune_with_its_split_start(tmp_path: Path):
    """alpha 0 is the start (split and merged back), alpha 1 the fine-tune, 0.5 their mean."""
    import torch

    from geoseg.models import build_model, save_checkpoint
    from geoseg.models.groups import MergedOutputs
    from tests.conftest import tiny_card

    wise = _load("wise")
    start_card = tiny_card(n_classes=3)
    torch.manual_seed(0)
    start = build_model(start_card)
    save_checkpoint(start, start_card, tmp_path / "start")
    fine_card = tiny_card(n_classes=4).replace(  # + cropland, split from vegetation
        training={"split_init": {"vegetation": ["cropland"]}}
    )
    torch.manual_seed(1)
    fine = build_model(fine_card)
    save_checkpoint(fine, fine_card, tmp_path / "fine")
    x = torch.randn(1, 3, 16, 16)
    groups = [[0], [1], [2, 3]]
    with torch.no_grad():
        at0, card = wise.interpolate(tmp_path / "start", tmp_path / "fine", 0.0)
        assert torch.allclose(
            MergedOutputs(at0, groups)(x).softmax(1), start(x).softmax(1), atol=1e-5
        )
        at1, _ = wise.interpolate(tmp_path / "start", tmp_path / "fine", 1.0)
        assert torch.allclose(at1(x), fine(x), atol=1e-6)
        half, _ = wise.interpolate(tmp_path / "start", tmp_path / "fine", 0.5)
    a0, a1, h = at0.state_dict(), at1.state_dict(), half.state_dict()
    assert all(torch.allclose(h[k], (a0[k] + a1[k]) / 2, atol=1e-6) for k in h)
    assert card.provenance["wise_ft"]["alpha"] == 0.0 and not card.metrics
    with pytest.raises(ValueError, match="alpha"):
        wise.interpolate(tmp_path / "start", tmp_path / "fine", 1.5)
    # The same classes: a plain average of the two.
    save_checkpoint(at1, fine_card, tmp_path / "fine2")
    same, _ = wise.interpolate(tmp_path / "fine", tmp_path / "fine2", 0.25)
    assert all(torch.allclose(same.state_dict()[k], a1[k], atol=1e-6) for k in a1)
    # New classes without split_init would start from random rows: refused.
    save_checkpoint(fine, fine_card.replace(training={}), tmp_path / "unsplit")
    with pytest.raises(ValueError, match="split_init"):
        wise.interpolate(tmp_path / "start", tmp_path / "unsplit", 0.5)
