"""The QGIS plugin in real QGIS: the provider loads, runs the real geoseg, loads styled results.

QGIS runs ``tests/qgis/qgis_driver.py`` under Debian's system Python (PyQGIS is
not installable into the virtualenv), as ``tests/io/test_qgis.py`` does; the
plugin starts the virtualenv's geoseg as a subprocess.  Skips, with the reason,
only when ``/usr/bin/python3 -c "import qgis.core"`` fails; install PyQGIS with
``.ci/install-qgis.sh``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
from matplotlib.image import imread
from rasterio.transform import from_origin
from scipy import ndimage

from tests.conftest import random_image, write_raster
from tests.io.test_qgis import SYSTEM_PYTHON, qgis_env

pytestmark = pytest.mark.qgis

DRIVER = Path(__file__).with_name("qgis_driver.py")
VENV_GEOSEG = Path(sys.executable).with_name("geoseg")
ONE_METRE = from_origin(500_000, 5_500_000, 1.0, 1.0)


def geoseg(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geoseg", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


def run_driver(spec: dict[str, Any], home: Path, **env: str) -> dict[str, Any]:
    spec_file = home / f"spec-{os.getpid()}-{len(spec['jobs'])}.json"
    spec_file.write_text(json.dumps(spec))
    base = {k: v for k, v in qgis_env(home).items() if k != "GEOSEG_EXECUTABLE"}
    proc = subprocess.run(
        [SYSTEM_PYTHON, os.fspath(DRIVER), f"@{spec_file}"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"driver failed (rc={proc.returncode}):\n{proc.stderr}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def qgis_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME for QGIS, once PyQGIS is known to import; skips otherwise."""
    home = tmp_path_factory.mktemp("qgis-home")
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} not found; PyQGIS needs the system Python")
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import qgis.core"],
        env=qgis_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no error output"])[-1]
        pytest.skip(
            f'{SYSTEM_PYTHON} -c "import qgis.core" failed ({last}); '
            "install PyQGIS with .ci/install-qgis.sh"
        )
    return home


@pytest.fixture(scope="module")
def session(qgis_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One QGIS session: the plugin from its repository zip, then every job below, in order."""
    from geoseg.synth import make_sample_scene

    d = tmp_path_factory.mktemp("plugin")
    scene = make_sample_scene(d / "scene", size=128, seed=3, pixel_size=1.0).image
    big = write_raster(d / "big.tif", random_image(512, 512), transform=ONE_METRE)
    gray = write_raster(d / "gray.tif", random_image(64, 64, bands=1), transform=ONE_METRE)
    r = geoseg("qgis-plugin", "--zip", d / "dist")
    assert r.returncode == 0, r.stderr
    (zip_path,) = (d / "dist").glob("*.zip")
    not_geoseg = d / "not-geoseg.txt"  # the setting accepts only existing files
    not_geoseg.write_text("not a program")
    names = ("seg", "cancel1", "cancel2", "bad", "vec", "setting", "unticked")
    out = {name: d / name for name in names}
    for folder in out.values():
        folder.mkdir()
    # Jobs run as the Toolbox runs them ("via": "task", the default) unless they say
    # "load" (processing.runAndLoadResults) or "run" (processing.run).
    jobs = [
        {
            "algorithm": "geoseg:segmentraster",
            "parameters": {"INPUT": str(scene), "OUTPUT": str(out["seg"] / "scene.gpkg")},
            "open_output": True,
            "renders": [
                {
                    "path": str(d / "classes.png"),
                    "layers": ["classes"],
                    "width": 128,
                    "height": 128,
                },
                {
                    "path": str(d / "polygons.png"),
                    "layers": ["polygons"],
                    "width": 128,
                    "height": 128,
                },
            ],
        },
        {
            # Cancel at the first tile: 121 tiles of 64 px, 8 passes each (TTA d4).
            "algorithm": "geoseg:segmentraster",
            "parameters": {
                "INPUT": str(big),
                "OUTPUT": str(out["cancel1"] / "big.gpkg"),
                "TILE": 64,
                "OVERLAP": 16,
                "TTA": 2,
                "DEVICE": 1,
            },
            "cancel_at": 0.01,
            "via": "load",
        },
        {
            # Cancel once the class raster is written, while its polygons are made.
            "algorithm": "geoseg:segmentraster",
            "parameters": {"INPUT": str(big), "OUTPUT": str(out["cancel2"] / "big.gpkg")},
            "cancel_at": 85.0,
        },
        {
            "algorithm": "geoseg:segmentraster",
            "parameters": {"INPUT": str(gray), "OUTPUT": str(out["bad"] / "gray.gpkg")},
        },
        {
            "algorithm": "geoseg:vectorizeclasses",
            "parameters": {
                "INPUT": str(out["seg"] / "scene_classes.tif"),
                "DST_CRS": "EPSG:4326",
                "OUTPUT": str(out["vec"] / "polygons.gpkg"),
            },
            "via": "load",
        },
        {
            "algorithm": "geoseg:segmentraster",
            "parameters": {"INPUT": str(scene), "OUTPUT": str(out["setting"] / "scene.gpkg")},
            "settings": {"GEOSEG_EXECUTABLE": str(not_geoseg)},
            "via": "run",
        },
        {
            "algorithm": "geoseg:segmentraster",
            "parameters": {"INPUT": str(scene), "OUTPUT": str(out["unticked"] / "scene.gpkg")},
            "open_output": False,
        },
    ]
    spec = {"plugins_dir": str(d / "plugins"), "plugin_zip": str(zip_path), "jobs": jobs}
    report = run_driver(spec, qgis_home, GEOSEG_EXECUTABLE=str(VENV_GEOSEG))
    return {"report": report, "dir": d, "out": out, "scene": scene, "gray": gray}


def job(session: dict[str, Any], index: int) -> dict[str, Any]:
    result = session["report"]["jobs"][index]
    assert isinstance(result, dict)
    return result


def class_table(path: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    with rasterio.open(path) as ds:
        return ds.read(1), json.loads(ds.tags()["GEOSEG_CLASSES"])


def rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])


def png(path: Path) -> np.ndarray:
    return np.asarray((imread(path)[..., :3] * 255).round(), dtype=int)


def test_provider_loads_from_the_repository_zip(session: dict[str, Any]) -> None:
    report = session["report"]
    plugin, provider = report["plugin"], report["provider"]
    assert plugin["found"] and plugin["compatible"], plugin
    assert plugin["metadata"]["qgisMinimumVersion"] == "3.22"
    assert plugin["metadata"]["hasProcessingProvider"] == "yes"
    assert provider["started"] and provider["loaded"], provider
    assert provider["algorithms"] == ["geoseg:segmentraster", "geoseg:vectorizeclasses"]
    assert "default" in provider["model_options"]
    assert provider["settings"] == ["GEOSEG_EXECUTABLE"]


def test_segment_raster_loads_styled_layers(session: dict[str, Any]) -> None:
    result = job(session, 0)
    assert result["ok"], result
    gpkg = session["out"]["seg"] / "scene.gpkg"
    classes_tif = session["out"]["seg"] / "scene_classes.tif"
    assert result["results"] == {"OUTPUT": str(gpkg), "CLASSES": str(classes_tif)}
    assert 85.0 in result["progress"] and 100.0 in result["progress"]
    assert any(line.startswith("command: ") and " predict " in line for line in result["log"])
    _, classes = class_table(classes_tif)
    vectorized = [c for c in classes if c["vectorize"]]
    layers = result["layers"]
    # One group named after the output: polygons in class order, the class raster below them.
    assert [layer["group"] for layer in layers] == ["scene"] * (len(vectorized) + 1)
    assert [layer["name"] for layer in layers[:-1]] == [c["layer"] for c in vectorized]
    on_disk: dict[str, int] = {}
    for layer, cls in zip(layers[:-1], vectorized, strict=True):
        assert layer["type"] == "vector" and layer["valid"]
        assert layer["renderer"] == "singleSymbol"
        assert (layer["fill_color"], layer["fill_alpha"]) == (cls["color"], 128)
        on_disk[layer["name"]] = len(pyogrio.read_dataframe(gpkg, layer=layer["name"]))
        assert layer["count"] == on_disk[layer["name"]]
    assert sum(on_disk.values()) > 0
    raster = layers[-1]
    assert raster["type"] == "raster" and raster["renderer"] == "paletted"
    assert raster["classes"] == [[c["id"], c["color"], c["name"]] for c in classes]


def test_map_render_shows_class_colours_where_the_classes_are(session: dict[str, Any]) -> None:
    assert job(session, 0)["ok"]
    cls, classes = class_table(session["out"]["seg"] / "scene_classes.tif")
    colors = {c["id"]: rgb(c["color"]) for c in classes}
    # The class raster at 1:1: every pixel in its class's colour.
    raster = png(session["dir"] / "classes.png")
    expected = np.stack([colors[v] for v in cls.ravel()]).reshape((*cls.shape, 3))
    assert raster.shape == expected.shape
    assert np.array_equal(raster, expected)
    # The polygons over white: inside each class (away from cleaned-up outlines) the
    # class colour at the styles' 50 % opacity; nothing drawn over background.
    polygons = png(session["dir"] / "polygons.png")
    for c in classes:
        core = ndimage.binary_erosion(cls == c["id"], np.ones((7, 7)))
        assert core.sum() >= 20, f"too few {c['name']} pixels to check"
        want = np.full(3, 255) if not c["vectorize"] else colors[c["id"]] * 128 / 255 + 127
        share = (np.abs(polygons[core] - want).max(axis=-1) <= 3).mean()
        assert share >= 0.9, f"{c['name']}: {share:.0%} of its pixels drawn in its colour"


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cancel_while_predicting_leaves_nothing(session: dict[str, Any]) -> None:
    result = job(session, 1)
    assert not result["ok"] and result["canceled"]
    assert result["error"].startswith("cancelled"), result
    assert max(result["progress"]) < 85.0, "cancelled after the raster stage, not during it"
    assert _files(session["out"]["cancel1"]) == []
    assert result["layers"] == []


def test_cancel_while_vectorizing_leaves_nothing(session: dict[str, Any]) -> None:
    result = job(session, 2)
    assert not result["ok"] and result["canceled"]
    assert result["error"].startswith("cancelled"), result
    # The class raster was complete under its final name; Cancel takes it away too.
    assert _files(session["out"]["cancel2"]) == []


def test_bad_input_shows_geosegs_one_line_error(session: dict[str, Any], tmp_path: Path) -> None:
    result = job(session, 3)
    assert not result["ok"] and not result["canceled"]
    cli = geoseg("predict", session["gray"], "-o", tmp_path / "gray.gpkg")
    assert cli.returncode == 1
    message = cli.stderr.strip().splitlines()[-1].removeprefix("geoseg: error: ")
    assert "band" in message
    assert result["error"] == message
    assert f"error: {message}" in result["log"]
    assert _files(session["out"]["bad"]) == []


def test_vectorize_class_raster(session: dict[str, Any]) -> None:
    result = job(session, 4)
    assert result["ok"], result
    names = [layer["name"] for layer in result["layers"]]
    assert names == ["buildings", "vegetation", "cropland"]
    assert {layer["crs"] for layer in result["layers"]} == {"EPSG:4326"}
    assert all(layer["renderer"] == "singleSymbol" for layer in result["layers"])
    assert any(
        line.startswith("command: ") and "--dst-crs EPSG:4326" in line for line in result["log"]
    )


def test_provider_setting_names_the_executable(session: dict[str, Any]) -> None:
    result = job(session, 5)
    assert not result["ok"]
    assert result["error"].startswith(f"cannot run {session['dir'] / 'not-geoseg.txt'}"), result
    assert "Processing > Options > Providers > geoseg" in result["error"]


def test_unticked_open_output_loads_nothing(session: dict[str, Any]) -> None:
    result = job(session, 6)
    assert result["ok"], result
    assert result["layers"] == []
    assert _files(session["out"]["unticked"]) == ["scene.gpkg", "scene_classes.tif"]


def test_installed_plugin_runs_the_geoseg_that_installed_it(
    qgis_home: Path, tmp_path: Path
) -> None:
    from geoseg.synth import make_sample_scene

    scene = make_sample_scene(tmp_path / "scene", size=64, seed=3, pixel_size=1.0).image
    r = geoseg("qgis-plugin", "--install", "--plugins-dir", tmp_path / "plugins")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "scene.gpkg"
    out.parent.mkdir()
    spec = {
        "plugins_dir": str(tmp_path / "plugins"),
        "jobs": [
            {
                "algorithm": "geoseg:segmentraster",
                "parameters": {"INPUT": str(scene), "OUTPUT": str(out)},
                "via": "run",
            }
        ],
    }
    # Neither $GEOSEG_EXECUTABLE (run_driver drops it) nor the virtualenv on PATH (qgis_env).
    report = run_driver(spec, qgis_home)
    result = report["jobs"][0]
    assert result["ok"], result
    assert any(f"command: {sys.executable} -m geoseg predict" in line for line in result["log"])
    assert out.is_file() and out.with_name("scene_classes.tif").is_file()
