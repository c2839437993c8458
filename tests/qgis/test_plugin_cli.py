"""``geoseg qgis-plugin``: the repository zip, the install into a profile (no QGIS needed)."""

from __future__ import annotations

import ast
import configparser
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import geoseg
from geoseg.cli.qgis import PLUGIN_SOURCE, qgis_profiles_dir

# What plugins.qgis.org requires in metadata.txt, and what this plugin declares.
REQUIRED_KEYS = (
    "name",
    "qgisMinimumVersion",
    "description",
    "about",
    "version",
    "author",
    "email",
    "repository",
    "tracker",
)


def geoseg_cli(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geoseg", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def test_zip_for_the_plugin_repository(tmp_path: Path) -> None:
    r = geoseg_cli("qgis-plugin", "--zip", tmp_path / "dist")
    assert r.returncode == 0, r.stderr
    zip_path = tmp_path / "dist" / f"geoseg_qgis-{geoseg.__version__}.zip"
    assert r.stdout.strip() == f"wrote {zip_path}"
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
        meta = configparser.ConfigParser()
        meta.read_string(zf.read("geoseg_qgis/metadata.txt").decode("utf-8"))
        sources = {n: zf.read(n).decode("utf-8") for n in names if n.endswith(".py")}
    assert {n.split("/")[0] for n in names} == {"geoseg_qgis"}
    for needed in ("__init__.py", "metadata.txt", "LICENSE", "icon.png", "runner.py"):
        assert f"geoseg_qgis/{needed}" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", "command.json"))]
    general = meta["general"]
    assert all(general.get(key, "").strip() for key in REQUIRED_KEYS), dict(general)
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["version"] == geoseg.__version__, "bump metadata.txt with geoseg's version"
    assert general["hasProcessingProvider"] == "yes"
    assert f"geoseg_qgis/{general['icon']}" in names
    for name, source in sources.items():
        # QGIS 3.22 runs Python 3.9 on Windows and macOS; QGIS has no geoseg to import.
        tree = ast.parse(source, name, feature_version=(3, 9))
        imported = {
            (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert not [m for m in imported if m.split(".")[0] == "geoseg"], name
    r = geoseg_cli("qgis-plugin", "--zip", tmp_path / "dist")
    assert r.returncode == 1 and "--overwrite" in r.stderr
    assert geoseg_cli("qgis-plugin", "--zip", tmp_path / "dist", "--overwrite").returncode == 0


def test_install_into_a_plugins_folder(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    r = geoseg_cli("qgis-plugin", "--install", "--plugins-dir", plugins)
    assert r.returncode == 0, r.stderr
    installed = plugins / "geoseg_qgis"
    shipped = sorted(
        p.relative_to(PLUGIN_SOURCE).as_posix()
        for p in PLUGIN_SOURCE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    got = sorted(p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file())
    assert got == sorted([*shipped, "geoseg_command.json"])
    for name in shipped:
        assert (installed / name).read_bytes() == (PLUGIN_SOURCE / name).read_bytes()
    # The installed plugin runs the geoseg that installed it.
    command = json.loads((installed / "geoseg_command.json").read_text())
    assert command == [sys.executable, "-m", "geoseg"]
    assert f"installed geoseg_qgis {geoseg.__version__} into {installed}" in r.stdout

    (installed / "metadata.txt").write_text("[general]\nname=old\n")
    r = geoseg_cli("qgis-plugin", "--install", "--plugins-dir", plugins)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"geoseg: error: {installed} exists; pass --overwrite to replace it"
    )
    assert (installed / "metadata.txt").read_text() == "[general]\nname=old\n"
    r = geoseg_cli("qgis-plugin", "--install", "--plugins-dir", plugins, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (installed / "metadata.txt").read_bytes() == (
        PLUGIN_SOURCE / "metadata.txt"
    ).read_bytes()
    assert sorted(p.name for p in plugins.iterdir()) == ["geoseg_qgis"], "no temporaries left"


def test_install_into_a_qgis_profile(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    profiles = tmp_path / "data" / "QGIS" / "QGIS3" / "profiles"
    r = geoseg_cli("qgis-plugin", "--install", env=env)
    assert r.returncode == 0, r.stderr
    assert (profiles / "default" / "python" / "plugins" / "geoseg_qgis" / "metadata.txt").is_file()
    r = geoseg_cli("qgis-plugin", "--install", "--profile", "work", env=env)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"geoseg: error: QGIS profile 'work' not found in {profiles} (profiles there: "
        "default); pass --profile NAME or --plugins-dir DIR"
    )
    (profiles / "work").mkdir()
    r = geoseg_cli("qgis-plugin", "--install", "--profile", "work", env=env)
    assert r.returncode == 0, r.stderr
    assert (profiles / "work" / "python" / "plugins" / "geoseg_qgis" / "__init__.py").is_file()
    r = geoseg_cli("qgis-plugin", "--profile", "work", env=env)
    assert r.returncode == 0 and f"{profiles / 'work' / 'python' / 'plugins'}" in r.stdout


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {"HOME": "/home/u"}, "/home/u/.local/share/QGIS/QGIS3/profiles"),
        ("linux", {"HOME": "/home/u", "XDG_DATA_HOME": "/xdg"}, "/xdg/QGIS/QGIS3/profiles"),
        ("darwin", {"HOME": "/Users/u"}, "/Users/u/Library/Application Support/QGIS/QGIS3/profiles"),
        ("win32", {"APPDATA": "/c/Users/u/AppData/Roaming"}, "/c/Users/u/AppData/Roaming/QGIS/QGIS3/profiles"),
        ("linux", {"HOME": "/home/u", "QGIS_CUSTOM_CONFIG_PATH": "/portable"}, "/portable/profiles"),
    ],
)  # fmt: skip
def test_profiles_folder_per_platform(
    monkeypatch: pytest.MonkeyPatch, platform: str, env: dict[str, str], expected: str
) -> None:
    for name in ("HOME", "XDG_DATA_HOME", "APPDATA", "QGIS_CUSTOM_CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "platform", platform)
    assert qgis_profiles_dir() == Path(expected)
