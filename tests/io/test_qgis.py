"""QGIS as the real client of geoseg's GeoPackages.

Writes GeoPackages with :class:`geoseg.io.write_vector.VectorWriter` and opens
them in PyQGIS through ``tests/io/qgis_check.py``, run by Debian's system
Python (PyQGIS is not installable into the virtualenv).  Skips, with the
reason, only when ``/usr/bin/python3 -c "import qgis.core"`` fails; install
PyQGIS with ``.ci/install-qgis.sh``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import shapely

from geoseg.io.write_vector import LayerSpec, VectorWriter

pytestmark = pytest.mark.qgis

SYSTEM_PYTHON = "/usr/bin/python3"
CHECK_SCRIPT = Path(__file__).with_name("qgis_check.py")

SPECS = (
    LayerSpec("Buildings", 1, "building", "#e31a1c"),
    LayerSpec("Végétation", 2, "vegetation", "#33a02c", outline_color="#000000"),
    LayerSpec("water", 3, "water", "#1f78b4"),
)
METADATA = {"geoseg_version": "0.1.0", "model_name": "unet-demo"}


def qgis_env(home: Path) -> dict[str, str]:
    """Environment for the system Python: no virtualenv, offscreen Qt, private HOME."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    venv_bin = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != venv_bin
    )
    runtime = home / "xdg-runtime"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    env.update(
        QT_QPA_PLATFORM="offscreen",
        HOME=os.fspath(home),
        XDG_RUNTIME_DIR=os.fspath(runtime),
    )
    return env


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


def run_check(path: Path, expectations: dict[str, Any], home: Path) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [SYSTEM_PYTHON, os.fspath(CHECK_SCRIPT), os.fspath(path), json.dumps(expectations)],
        env=qgis_env(home),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"qgis_check.py printed nothing (rc={proc.returncode}):\n{proc.stderr}"
    return proc.returncode, json.loads(lines[-1])


def write_gpkg(path: Path, crs: str, origin: tuple[float, float, float]) -> None:
    x0, y0, size = origin
    with VectorWriter(path, crs=crs, layers=SPECS, metadata=METADATA) as writer:
        writer.write(
            "Buildings",
            [
                shapely.box(x0 + i * 2 * size, y0, x0 + i * 2 * size + size, y0 + size)
                for i in (0, 1)
            ],
            {"area_m2": [100.0, 100.0], "perimeter_m": [40.0, 40.0], "confidence": [0.9, None]},
        )
        writer.write(
            "Végétation",
            [shapely.box(x0, y0 + 3 * size, x0 + size, y0 + 4 * size)],
            {"area_m2": [100.0], "perimeter_m": [40.0], "source": ["scene.tif"]},
        )


@pytest.mark.parametrize(
    ("crs", "origin"),
    [("EPSG:32633", (500_000.0, 5_000_000.0, 10.0)), ("EPSG:4326", (15.0, 45.0, 1e-4))],
)
def test_qgis_loads_layers_with_default_styles(
    tmp_path: Path, qgis_home: Path, crs: str, origin: tuple[float, float, float]
) -> None:
    out = tmp_path / "scene.gpkg"
    write_gpkg(out, crs, origin)
    fields = ["class_id", "class_name", "area_m2", "perimeter_m", "confidence", "source"]
    expectations = {
        "layers": {
            "buildings": {
                "crs": crs,
                "count": 2,
                "color": "#e31a1c",
                "outline_color": "#e31a1c",
                "fields": fields,
            },
            "vegetation": {
                "crs": crs,
                "count": 1,
                "color": "#33a02c",
                "outline_color": "#000000",
                "fields": fields,
            },
            "water": {"crs": crs, "count": 0, "color": "#1f78b4", "fields": fields},
        }
    }
    rc, report = run_check(out, expectations, qgis_home)
    assert report["ok"], json.dumps(report, indent=1)
    assert rc == 0
    for name, layer in report["layers"].items():
        assert layer["valid"]
        assert layer["renderer"] == "singleSymbol"
        assert layer["styles_in_database"] == [name]
        assert layer["fill_alpha"] == 128
    assert report["layers"]["vegetation"]["outline_color"] == "#000000"


def test_qgis_check_notices_missing_styles(tmp_path: Path, qgis_home: Path) -> None:
    # Guards the check itself: without layer_styles QGIS picks a random colour.
    out = tmp_path / "scene.gpkg"
    write_gpkg(out, "EPSG:32633", (500_000.0, 5_000_000.0, 10.0))
    with sqlite3.connect(out) as con:
        con.execute("DELETE FROM layer_styles")
    con.close()
    rc, report = run_check(out, {"layers": {"buildings": {"color": "#e31a1c"}}}, qgis_home)
    assert rc == 1
    assert not report["ok"]
    assert any("no style" in p for p in report["layers"]["buildings"]["problems"])
