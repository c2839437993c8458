"""End-to-end runs on generated rasters: georeferencing, nodata, outputs, memory."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin

from geoseg.errors import (
    BandError,
    ConfigError,
    GeoreferenceError,
    OutputExistsError,
    RasterReadError,
)
from geoseg.pipeline import PredictConfig, run_scene
from tests.conftest import random_image

CFG = PredictConfig(device="cpu", tile=64, overlap=16)


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:32633", from_origin(500000, 6000000, 0.5, 0.5)),
        ("EPSG:4326", from_origin(13.4, 52.5, 0.000005, 0.000005)),
        ("EPSG:3857", from_origin(1491000, 6892000, 0.5, 0.5)),
    ],
)
def test_output_has_input_georeferencing(tiny_model_dir, make_raster, tmp_path, crs, transform):
    src = make_raster(crs=crs, transform=transform, shape=(90, 110))
    run_scene(src, tmp_path / "out.tif", tiny_model_dir, CFG)
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out.tif") as b:
        assert b.crs == a.crs
        assert b.transform == a.transform
        assert (b.width, b.height) == (a.width, a.height)
        assert b.bounds == a.bounds
        assert b.dtypes[0] == "uint8" and b.nodata == 255
        assert b.colormap(1)[1][:3] == (0xE4, 0x1A, 0x1C)
        assert b.tags()["GEOSEG_MODEL"] == "tiny-test"


def test_nodata_propagates_and_is_not_hallucinated(tiny_model_dir, make_raster, tmp_path):
    img = random_image(100, 100)
    img[:, 10:40, 20:60] = 0
    img[:, 10:40, 20:60][0, 0, 0] = 0
    src = make_raster(img, nodata=0)
    with rasterio.open(src) as ds:
        valid = ds.dataset_mask() > 0
    run_scene(src, tmp_path / "out.tif", tiny_model_dir, CFG)
    with rasterio.open(tmp_path / "out.tif") as ds:
        cls = ds.read(1)
    assert (cls[~valid] == 255).all()
    assert (cls[valid] != 255).all()


def test_float_nan_and_alpha_masks(tiny_model_dir, make_raster, tmp_path):
    img = random_image(80, 80).astype("float32")
    img[:, 5:15, 5:15] = np.nan
    src = make_raster(img)
    run_scene(
        src,
        tmp_path / "a.tif",
        tiny_model_dir,
        PredictConfig(device="cpu", tile=64, overlap=16, input_range=(0, 255)),
    )
    with rasterio.open(tmp_path / "a.tif") as ds:
        assert (ds.read(1)[5:15, 5:15] == 255).all()
    rgba = np.concatenate([random_image(80, 80), np.full((1, 80, 80), 255, np.uint8)])
    rgba[3, 50:60, 50:60] = 0
    src2 = make_raster(rgba, photometric="RGB", alpha="YES")
    run_scene(src2, tmp_path / "b.tif", tiny_model_dir, CFG)  # alpha is not fed to the model
    with rasterio.open(tmp_path / "b.tif") as ds:
        cls = ds.read(1)
    assert (cls[50:60, 50:60] == 255).all() and (cls[:50] != 255).all()


def test_probabilities_output(tiny_model_dir, make_raster, tmp_path):
    src = make_raster(shape=(70, 90))
    cfg = PredictConfig(device="cpu", tile=64, overlap=16, probabilities=tmp_path / "p.tif")
    run_scene(src, tmp_path / "c.tif", tiny_model_dir, cfg)
    with rasterio.open(tmp_path / "p.tif") as p, rasterio.open(tmp_path / "c.tif") as c:
        probs = p.read().astype(int)
        cls = c.read(1)
        assert p.count == 3
        assert np.abs(probs.sum(0) - 254).max() <= 2
        top2 = np.sort(probs, axis=0)[-2:]
        clear = top2[1] - top2[0] >= 2  # uint8 rounding may flip near-ties only
        assert clear.mean() > 0.3
        assert (probs.argmax(0)[clear] == cls[clear]).all()


def test_all_nodata_gives_valid_empty_output_and_warns(tiny_model_dir, make_raster, tmp_path):
    src = make_raster(np.zeros((3, 50, 50), np.uint8), nodata=0)
    with pytest.warns(UserWarning, match="no valid pixel"):
        stats = run_scene(src, tmp_path / "o.tif", tiny_model_dir, CFG)
    assert stats.valid_pixels == 0 and stats.skipped_tiles == stats.tiles
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert (ds.read(1) == 255).all()


def test_refuses_existing_output_and_leaves_it_untouched(tiny_model_dir, make_raster, tmp_path):
    src = make_raster()
    out = tmp_path / "o.tif"
    out.write_bytes(b"previous")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        run_scene(src, out, tiny_model_dir, CFG)
    assert out.read_bytes() == b"previous"
    run_scene(
        src, out, tiny_model_dir, PredictConfig(device="cpu", tile=64, overlap=16, overwrite=True)
    )
    with rasterio.open(out) as ds:
        assert ds.width == 120
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["o.tif", src.name])


def test_bad_inputs_raise_clear_errors(tiny_model_dir, make_raster, tmp_path):
    with pytest.raises(RasterReadError, match="does not exist"):
        run_scene(tmp_path / "missing.tif", tmp_path / "o.tif", tiny_model_dir, CFG)
    with pytest.raises(RasterReadError, match="directory"):
        run_scene(tmp_path, tmp_path / "o.tif", tiny_model_dir, CFG)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(RasterReadError):
        run_scene(junk, tmp_path / "o.tif", tiny_model_dir, CFG)
    with pytest.raises(GeoreferenceError, match="assume_crs='EPSG:XXXX'"):
        run_scene(make_raster(crs=None), tmp_path / "o.tif", tiny_model_dir, CFG)
    with pytest.raises(BandError, match="bands="):
        run_scene(
            make_raster(random_image(40, 40, bands=5)), tmp_path / "o.tif", tiny_model_dir, CFG
        )
    assert not (tmp_path / "o.tif").exists()
    assert not [p for p in tmp_path.iterdir() if "geoseg" in p.name]


def test_band_selection(tiny_model_dir, make_raster, tmp_path):
    img = random_image(40, 40, bands=4)
    src = make_raster(img)
    run_scene(
        src,
        tmp_path / "a.tif",
        tiny_model_dir,
        PredictConfig(device="cpu", tile=64, overlap=16, bands=(3, 2, 1)),
    )
    src3 = make_raster(img[[2, 1, 0]].copy())
    run_scene(src3, tmp_path / "b.tif", tiny_model_dir, CFG)
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_resamples_to_model_pixel_size_and_back(tmp_path, make_raster):
    import torch

    from geoseg.models import build_model, save_checkpoint
    from tests.conftest import tiny_card

    card = tiny_card(pixel_size_m=1.0)
    torch.manual_seed(1)
    mdir = save_checkpoint(build_model(card), card, tmp_path / "m1")
    img = random_image(200, 160)
    img[:, :20, :20] = 0
    src = make_raster(img, transform=from_origin(500000, 6000000, 0.25, 0.25), nodata=0)
    stats = run_scene(src, tmp_path / "o.tif", mdir, CFG)
    assert stats.resampled_to_m == 1.0
    with rasterio.open(src) as a, rasterio.open(tmp_path / "o.tif") as b:
        assert (b.transform, b.width, b.height, b.crs) == (a.transform, a.width, a.height, a.crs)
        cls = b.read(1)
        valid = a.dataset_mask() > 0
    assert (cls[~valid] == 255).all()
    assert (cls[valid] != 255).mean() > 0.99
    # Classes come from a 4x coarser grid: they form blocks, not pixel noise.
    assert (cls[valid][:-1] == cls[valid][1:]).mean() > 0.6


def test_inputs_far_coarser_than_the_model_are_refused_before_any_work(tmp_path, make_raster):
    import dataclasses

    import torch

    from geoseg.models import build_model, save_checkpoint
    from tests.conftest import tiny_card

    card = tiny_card(pixel_size_m=1.0)
    torch.manual_seed(1)
    mdir = save_checkpoint(build_model(card), card, tmp_path / "m1")
    src = make_raster(random_image(40, 30), transform=from_origin(500000, 6000000, 3.0, 3.0))
    out = tmp_path / "o.tif"
    with pytest.raises(
        ConfigError, match=r"3 m pixels, 3x coarser than the 1 m .*resample='force'"
    ):
        run_scene(src, out, mdir, CFG)
    assert not out.exists() and list(tmp_path.glob("o.tif*")) == []
    # Within the factor: resampled as before.
    near = make_raster(random_image(40, 30), transform=from_origin(500000, 6000000, 2.0, 2.0))
    assert run_scene(near, tmp_path / "n.tif", mdir, CFG).resampled_to_m == 1.0
    # Forced: upsampled to the model's grid and written on the input's.
    stats = run_scene(src, out, mdir, dataclasses.replace(CFG, resample="force"))
    assert stats.resampled_to_m == 1.0
    with rasterio.open(out) as b:
        assert (b.width, b.height) == (30, 40)
    # Never: run at the input's own pixels.
    stats = run_scene(src, tmp_path / "v.tif", mdir, dataclasses.replace(CFG, resample="never"))
    assert stats.resampled_to_m is None


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gcp_raster_runs_on_a_north_up_grid_like_its_geotransform_twin(
    tmp_path, tiny_model_dir, make_raster
):
    from rasterio.control import GroundControlPoint

    img = random_image(120, 160)
    t = from_origin(500000, 6000000, 1.0, 1.0)
    ref = make_raster(img, transform=t)
    # The same pixels placed by four corner GCPs instead of a geotransform.
    gcp_path = tmp_path / "gcps.tif"
    with rasterio.open(ref) as a:
        profile = a.profile
        corners = [(0, 0), (0, 160), (120, 0), (120, 160)]
        gcps = [GroundControlPoint(r, c, *(t * (c, r))) for r, c in corners]
        profile.pop("transform")
        with rasterio.open(gcp_path, "w", **profile) as g:
            g.write(a.read())
            g.gcps = (gcps, a.crs)
    with rasterio.open(gcp_path) as g:
        assert g.transform.is_identity and g.gcps[0]
    run_scene(ref, tmp_path / "ref.tif", tiny_model_dir, CFG)
    run_scene(gcp_path, tmp_path / "gcp.tif", tiny_model_dir, CFG)
    assert not list(tmp_path.glob("*.vrt"))  # the warped VRT was temporary
    with rasterio.open(tmp_path / "ref.tif") as a, rasterio.open(tmp_path / "gcp.tif") as b:
        assert b.crs == a.crs and b.transform.is_rectilinear
        for u, v in zip(a.bounds, b.bounds, strict=True):
            assert abs(u - v) <= 1.0  # within a pixel
    # Put the GCP run's classes on the reference grid: they agree almost everywhere.
    back, want = classes_on_grid_of(tmp_path / "gcp.tif", tmp_path / "ref.tif")
    both = (back != 255) & (want != 255)
    assert both.mean() > 0.9
    assert (back[both] == want[both]).mean() > 0.95


def classes_on_grid_of(path: Path, reference: Path) -> tuple[np.ndarray, np.ndarray]:
    """The classes of `path` warped (nearest) onto the grid of `reference`, and its own."""
    from rasterio.warp import reproject

    with rasterio.open(reference) as a, rasterio.open(path) as b:
        back = np.full((a.height, a.width), 255, np.uint8)
        reproject(
            b.read(1),
            back,
            src_transform=b.transform,
            src_crs=b.crs,
            dst_transform=a.transform,
            dst_crs=a.crs,
            src_nodata=255,
            dst_nodata=255,
        )
        return back, a.read(1)


def _affine_rpcs(lon0: float, lat0: float, d: float, width: int, height: int) -> object:
    """RPC coefficients that place pixels exactly as the EPSG:4326 geotransform
    ``from_origin(lon0, lat0, d, d)`` does (RPC pixel (0, 0) is the centre of the
    first pixel, hence the half-pixel offsets)."""
    from rasterio.rpc import RPC

    zero = [0.0] * 20
    num_samp, num_line, den = zero.copy(), zero.copy(), zero.copy()
    num_samp[1] = 1.0  # longitude
    num_line[2] = -1.0  # latitude: rows run south
    den[0] = 1.0
    return RPC(
        height_off=0.0,
        height_scale=500.0,
        lat_off=lat0 - d * height / 2,
        lat_scale=d * height / 2,
        line_den_coeff=den,
        line_num_coeff=num_line,
        line_off=height / 2 - 0.5,
        line_scale=height / 2,
        long_off=lon0 + d * width / 2,
        long_scale=d * width / 2,
        samp_den_coeff=den,
        samp_num_coeff=num_samp,
        samp_off=width / 2 - 0.5,
        samp_scale=width / 2,
    )


def rpc_twin(tmp_path: Path, make_raster) -> tuple[Path, Path]:
    """A 160 x 200 EPSG:4326 raster at (10 E, 50 N), 1e-5 degree pixels, and the same
    pixels placed by RPC coefficients instead of its geotransform."""
    h, w, d, lon0, lat0 = 160, 200, 1e-5, 10.0, 50.0
    ref = make_raster(random_image(h, w), transform=from_origin(lon0, lat0, d, d), crs="EPSG:4326")
    rpc_path = tmp_path / "rpcs.tif"
    with rasterio.open(ref) as a:
        profile = a.profile
        profile.pop("transform")
        profile.pop("crs")
        with rasterio.open(rpc_path, "w", **profile) as r:
            r.write(a.read())
            r.rpcs = _affine_rpcs(lon0, lat0, d, w, h)
    return ref, rpc_path


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("dem", [False, True])
def test_rpc_raster_runs_on_a_north_up_grid_like_its_geotransform_twin(
    tmp_path, tiny_model_dir, make_raster, dem
):
    """Placed by RPCs, a raster gives the classes of the same pixels placed by a geotransform."""

    ref, rpc_path = rpc_twin(tmp_path, make_raster)
    lon0, lat0 = 10.0, 50.0
    with rasterio.open(rpc_path) as r:
        assert r.transform.is_identity and r.rpcs is not None
    cfg = CFG
    if dem:
        # A flat DEM: the same places as the constant height (the coefficients ignore it).
        dem_path = make_raster(
            np.full((1, 20, 20), 120.0, np.float32),
            transform=from_origin(lon0 - 0.001, lat0 + 0.001, 2e-4, 2e-4),
            crs="EPSG:4326",
        )
        cfg = dataclasses.replace(CFG, rpc_dem=dem_path)
    run_scene(ref, tmp_path / "ref.tif", tiny_model_dir, CFG)
    run_scene(rpc_path, tmp_path / "rpc.tif", tiny_model_dir, cfg)
    assert not list(tmp_path.glob("*.north-up.tif"))  # the warped copy was temporary
    with rasterio.open(tmp_path / "rpc.tif") as b:
        assert b.crs.to_epsg() == 32632  # UTM zone of 10 E, 50 N
        # Square pixels between the 0.72 m (longitude) and 1.11 m (latitude) of the source.
        assert b.transform.is_rectilinear and 0.7 < b.transform.a < 1.12
    # Put the RPC run's classes on the reference grid: they agree almost everywhere.
    back, want = classes_on_grid_of(tmp_path / "rpc.tif", tmp_path / "ref.tif")
    both = (back != 255) & (want != 255)
    assert both.mean() > 0.9
    # The network saw the pixels resampled onto another grid: most classes agree.
    assert (back[both] == want[both]).mean() > 0.8


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_rpc_warp_places_pixels_exactly_where_the_geotransform_does(tmp_path, make_raster):
    """The warped grid's pixels equal the twin warped onto that grid: no half-pixel shift."""
    from rasterio.warp import Resampling, reproject

    from geoseg.io.read import north_up_rpc

    ref, rpc_path = rpc_twin(tmp_path, make_raster)
    with north_up_rpc(rpc_path) as grid, rasterio.open(grid) as b, rasterio.open(ref) as a:
        assert b.colorinterp[-1] == rasterio.enums.ColorInterp.alpha
        got = b.read(1).astype(np.float64)
        covered = b.dataset_mask() > 0
        errors = {}
        for shift in (0.0, 0.5):
            want = np.zeros(got.shape)
            reproject(
                a.read(1).astype(np.float64),
                want,
                src_transform=a.transform * Affine.translation(shift, 0),
                src_crs=a.crs,
                dst_transform=b.transform,
                dst_crs=b.crs,
                resampling=Resampling.bilinear,
            )
            inner = covered & (want > 0)
            errors[shift] = np.abs(got[inner] - want[inner]).mean()
    assert covered.mean() > 0.5
    assert errors[0.0] < 1.0 < 3.0 < errors[0.5], errors
    assert not Path(grid).exists()


def test_rpc_placement_errors_are_one_line(tmp_path, tiny_model_dir, make_raster):
    with rasterio.open(make_raster(random_image(40, 50))) as a:
        profile = a.profile
        data = a.read()
    profile.pop("transform")
    profile.pop("crs")
    rpc_path = tmp_path / "rpcs.tif"
    with rasterio.open(rpc_path, "w", **profile) as r:
        r.write(data)
        r.rpcs = _affine_rpcs(10.0, 50.0, 1e-5, 50, 40)
    out = tmp_path / "o.tif"
    with pytest.raises(GeoreferenceError, match=r"the DEM .*nope.tif.* does not exist"):
        run_scene(
            rpc_path, out, tiny_model_dir, dataclasses.replace(CFG, rpc_dem=tmp_path / "nope.tif")
        )
    with pytest.raises(ConfigError, match="rpc_height must be a finite"):
        dataclasses.replace(CFG, rpc_height=float("nan"))
    assert not out.exists() and not list(tmp_path.glob("o.tif*"))


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, rasterio
    from rasterio.transform import from_origin
    from geoseg.pipeline import PredictConfig, run_scene
    from geoseg.runtime import bound_malloc
    bound_malloc()  # as the CLI does
    height, width, model, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    src = out + ".in.tif"
    prof = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", tiled=True,
                crs="EPSG:32633", transform=from_origin(500000, 6000000, 0.5, 0.5))
    with rasterio.open(src, "w", **prof) as ds:
        rng = np.random.default_rng(0)
        for r in range(0, height, 512):
            h = min(512, height - r)
            ds.write(rng.integers(0, 255, (3, h, width), dtype=np.uint8),
                     window=rasterio.windows.Window(0, r, width, h))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_scene(src, out, model, PredictConfig(device="cpu", tile=256, overlap=32, threads=1,
                                             probabilities=out + ".p.tif"))
    print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "base_kb": base}))
    """
)


def _peak(tmp_path, model, h, w):
    out = tmp_path / f"m{h}.tif"
    r = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(h), str(w), str(model), str(out)],
        capture_output=True,
        text=True,
        check=True,
        # GDAL's block cache is a fixed cap (64 MB by default) that a tall raster
        # fills and a short one may not; keep it small so geoseg's own buffers show.
        env={**os.environ, "GEOSEG_GDAL_CACHEMAX": "8"},
    )
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_kb"] / 1024


def test_peak_memory_does_not_grow_with_height(tiny_model_dir, tmp_path):
    """A raster 8x taller must not need more memory (no time is measured)."""
    short = _peak(tmp_path, tiny_model_dir, 768, 1024)
    tall = _peak(tmp_path, tiny_model_dir, 6144, 1024)
    # A whole-scene float accumulator for the tall raster alone would add
    # (3 classes + weights) * 4 bytes * 6.3 Mpx = 100 MB, plus probabilities.
    assert tall - short < 20, f"peak RSS grew from {short:.0f} MB to {tall:.0f} MB"


def test_region_runs_are_identical_to_the_whole_run(tiny_model_dir, make_raster, tmp_path):
    from geoseg.types import PixelWindow

    src = make_raster(shape=(230, 190))
    cfg = dict(device="cpu", tile=64, overlap=16, probabilities=None)
    run_scene(src, tmp_path / "whole.tif", tiny_model_dir, PredictConfig(**cfg))
    with rasterio.open(tmp_path / "whole.tif") as ds:
        whole = ds.read(1)
        transform = ds.transform
    for i, core in enumerate(
        [
            PixelWindow(0, 0, 100, 90),
            PixelWindow(100, 90, 130, 100),
            PixelWindow(37, 51, 61, 77),
            PixelWindow(229, 0, 1, 190),
        ]
    ):
        out = tmp_path / f"r{i}.tif"
        run_scene(src, out, tiny_model_dir, PredictConfig(**cfg, region=core))
        with rasterio.open(out) as ds:
            part = ds.read(1)
            assert ds.transform == transform * rasterio.Affine.translation(
                core.col_off, core.row_off
            )
        np.testing.assert_array_equal(
            part, whole[core.row_off : core.row_end, core.col_off : core.col_end]
        )


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_readers_and_workers_give_the_same_raster(tiny_model_dir, make_raster, tmp_path, backend):
    from geoseg.infer.backends import onnxruntime_available

    if backend == "onnx" and not onnxruntime_available():
        pytest.skip("onnxruntime not installed")
    data = random_image(210, 170, seed=3)
    data[:, :50, :70] = 0
    src = make_raster(data, nodata=0)
    base = dict(device="cpu", tile=64, overlap=16, backend=backend)
    run_scene(
        src, tmp_path / "one.tif", tiny_model_dir, PredictConfig(**base, readers=1, workers=1)
    )
    run_scene(
        src, tmp_path / "many.tif", tiny_model_dir, PredictConfig(**base, readers=3, workers=2)
    )
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "many.tif") as b:
        one, many = a.read(1), b.read(1)
    assert (one[:50, :70] == 255).all()
    np.testing.assert_array_equal(one, many)


def test_masks_are_read_only_when_a_band_has_one(make_raster, tmp_path):
    """The all-valid fast path applies to rasters without nodata, mask or alpha only."""
    from geoseg.io.read import RasterSource
    from geoseg.types import PixelWindow

    data = random_image(64, 64)
    plain = make_raster(data)
    masked = tmp_path / "masked.tif"
    with rasterio.open(plain) as ds:
        profile = ds.profile
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked, "w", **profile) as ds:
        ds.write(data)
        mask = np.full((64, 64), 255, np.uint8)
        mask[10:20, 30:40] = 0
        ds.write_mask(mask)
    win = PixelWindow(-8, -8, 80, 80)  # past the edges: reflection applies to validity too
    with RasterSource(plain) as r:
        assert r._all_valid
        _, valid = r.read(win)
        assert valid.all()
    with RasterSource(masked) as r:
        assert not r._all_valid
        _, valid = r.read(win)
        assert not valid[18:28, 38:48].any() and valid.sum() < 80 * 80
    with pytest.raises(ConfigError, match="readers must be between"):
        PredictConfig(readers=17)
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        PredictConfig(workers=0)


NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from geoseg.pipeline import PredictConfig, run_scene
    src, model, out = sys.argv[1:4]
    stats = run_scene(src, out, model, PredictConfig(device="cpu", overwrite=True))
    print(json.dumps({"torch": "torch" in sys.modules, "tiles": stats.tiles}))
    """
)


def test_cached_onnx_runs_never_import_torch(tiny_model_dir, make_raster, tmp_path):
    """Once a checkpoint's export is cached, a CPU run needs neither PyTorch nor the network."""
    from geoseg.infer.backends import onnxruntime_available

    if not onnxruntime_available():
        pytest.skip("onnxruntime not installed")
    src = make_raster(shape=(150, 170))
    env = {**os.environ, "GEOSEG_CACHE_DIR": str(tmp_path / "cache")}

    def run(out):
        r = subprocess.run(
            [sys.executable, "-c", NO_TORCH_SCRIPT, str(src), str(tiny_model_dir), str(out)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    first = run(tmp_path / "first.tif")  # exports: builds the network with torch
    assert first["torch"] and first["tiles"] > 0
    second = run(tmp_path / "second.tif")
    assert not second["torch"], "a cached export must not need torch"
    with rasterio.open(tmp_path / "first.tif") as a, rasterio.open(tmp_path / "second.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_background_writer_waits_for_its_thread_when_interrupted() -> None:
    """Ctrl-C (or SIGTERM) while the writer thread is busy: close() returns only when it is done.

    The caller aborts the raster writer next; closing a dataset the thread still
    writes to crashed GDAL (a segfault on SIGTERM at the end of the raster stage).
    """
    import signal
    import threading
    import time

    from geoseg.infer.stream import Strip
    from geoseg.pipeline import _BackgroundWriter

    release = threading.Event()
    written: list[int] = []

    def slow_write(strip: Strip) -> None:
        release.wait(10)
        written.append(strip.row_off)

    bg = _BackgroundWriter(slow_write)
    for i in range(2):
        bg.put(Strip(i, np.zeros((1, 4), np.uint8), None, None))
    main = threading.get_ident()

    def interrupt_then_release() -> None:
        time.sleep(0.3)
        signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.3)
        release.set()

    helper = threading.Thread(target=interrupt_then_release)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            bg.close()
        # The interrupt came while the thread was writing: it is finished now, and it
        # wrote nothing after the interrupt.
        assert bg.finished
        assert written == [0]
    finally:
        signal.signal(signal.SIGINT, previous)
        release.set()
        helper.join()
