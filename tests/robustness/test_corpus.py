"""Every raster of the shared robustness corpus: a correct result or one clear error line.

The expected outcome of each file is recorded in ``corpus_outcomes.csv`` beside this
test (path relative to the corpus, ``ok`` or ``error``, extra CLI arguments, and for
errors a phrase the message must contain).  A file missing from the table fails the
test, so new corpus files get a decision.  Skips cleanly without ../shared/data.
"""

from __future__ import annotations

import contextlib
import csv
import shlex
from pathlib import Path

import pyogrio
import pytest
import rasterio

from geoseg.cli import main
from geoseg.io.read import north_up_rpc, north_up_vrt
from tests.conftest import shared_data

TABLE = Path(__file__).with_name("corpus_outcomes.csv")
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".jpg", ".jp2", ".img", ".png"}


def _corpus() -> Path | None:
    root = shared_data()
    return root / "rasters" if root and (root / "rasters").is_dir() else None


def _table() -> dict[str, dict[str, str]]:
    with open(TABLE, newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def _files() -> list[str]:
    root = _corpus()
    if root is None:
        return []
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
    )


pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        _corpus() is None, reason="../shared/data/rasters is absent (set GEOSEG_TEST_DATA)"
    ),
]


@pytest.fixture(scope="module")
def corpus_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from geoseg.models import build_model, save_checkpoint
    from tests.conftest import tiny_card

    torch.manual_seed(0)
    card = tiny_card(tile_size=256, overlap=32)
    return save_checkpoint(build_model(card), card, tmp_path_factory.mktemp("corpus") / "tiny")


def test_every_corpus_raster_has_a_decision():
    missing = sorted(set(_files()) - set(_table()))
    assert not missing, f"add these corpus files to {TABLE.name}: {missing}"


@pytest.mark.parametrize("name", _files())
def test_corpus_raster(
    name: str, corpus_model: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    row = _table().get(name)
    if row is None:
        pytest.fail(f"{name} has no row in {TABLE.name}")
    src = _corpus() / name  # type: ignore[operator]
    out = tmp_path / "out.gpkg"
    args = [
        "-q",
        "predict",
        str(src),
        "-o",
        str(out),
        "--model",
        str(corpus_model),
        "--device",
        "cpu",
        *shlex.split(row["args"]),
    ]
    # In-process (the CLI's own main, exit code and file-descriptor output) so torch
    # is imported once for the whole corpus.
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    code = exit_info.value.code or 0
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    if row["outcome"] == "error":
        assert code != 0, f"expected an error for {name}"
        assert "Traceback" not in captured.err, captured.err
        errors = [line for line in lines if line.startswith("geoseg: error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], captured.err
        assert row["expect"] in errors[0], errors[0]
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if "geoseg" in p.name]
        return
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    classes = tmp_path / "out_classes.tif"
    assume = shlex.split(row["args"])
    with rasterio.open(src) as probe:
        by_gcps = probe.transform.is_identity and bool(probe.gcps[0])
        by_rpcs = probe.transform.is_identity and probe.rpcs is not None
    with contextlib.ExitStack() as stack:
        # A GCP (RPC) raster's outputs lie on the north-up grid fitted to its GCPs (RPCs).
        grid = (
            stack.enter_context(north_up_vrt(src))
            if by_gcps
            else stack.enter_context(north_up_rpc(src))
            if by_rpcs
            else src
        )
        a = stack.enter_context(rasterio.open(grid))
        b = stack.enter_context(rasterio.open(classes))
        want_crs = (
            a.crs
            if a.crs is not None
            else rasterio.crs.CRS.from_user_input(assume[assume.index("--assume-crs") + 1])
        )
        assert b.crs == want_crs
        assert b.transform.almost_equals(a.transform)
        assert (b.width, b.height) == (a.width, a.height)
        bounds = b.bounds
    for layer, _ in pyogrio.list_layers(out):
        if layer == "layer_styles":
            continue
        info = pyogrio.read_info(out, layer=layer)
        if info["features"]:
            xmin, ymin, xmax, ymax = info["total_bounds"]
            tol = 1e-6 * max(abs(bounds.right - bounds.left), 1)
            assert xmin >= bounds.left - tol and xmax <= bounds.right + tol
            assert ymin >= bounds.bottom - tol and ymax <= bounds.top + tol
