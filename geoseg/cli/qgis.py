"""``geoseg qgis-plugin``: install the QGIS plugin into a profile, or zip it for the plugin repository.

The plugin ships inside the package as data (``geoseg/qgis_plugin/geoseg_qgis``,
a folder without ``__init__.py`` above it, so it is never imported as part of
geoseg): QGIS runs it under its own Python, and it runs geoseg as a program.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from geoseg.cli.options import overwrite_opt

PLUGIN_NAME = "geoseg_qgis"

#: The plugin's source folder inside the installed package.
PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "qgis_plugin" / PLUGIN_NAME

#: Written by ``--install`` into the installed plugin: the command that runs this geoseg.
COMMAND_FILE = "geoseg_command.json"

_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", COMMAND_FILE)


def qgis_profiles_dir() -> Path:
    """The folder holding QGIS 3's user profiles on this platform.

    ``QGIS_CUSTOM_CONFIG_PATH`` moves it, as it does for QGIS itself.
    """
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        return Path(custom) / "profiles"
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "QGIS" / "QGIS3" / "profiles"


def plugins_dir_of(profile: str) -> Path:
    """The ``python/plugins`` folder of QGIS profile `profile`.

    Raises
    ------
    ConfigError
        The profile does not exist (``default`` may: QGIS creates it on first start).
    """
    from geoseg.errors import ConfigError

    profiles = qgis_profiles_dir()
    if profile != "default" and not (profiles / profile).is_dir():
        found = (
            sorted(p.name for p in profiles.iterdir() if p.is_dir()) if profiles.is_dir() else []
        )
        raise ConfigError(
            f"QGIS profile {profile!r} not found in {profiles} (profiles there: "
            f"{', '.join(found) or 'none'}); pass --profile NAME or --plugins-dir DIR"
        )
    return profiles / profile / "python" / "plugins"


def plugin_version() -> str:
    """The ``version`` of the plugin's ``metadata.txt``."""
    import configparser

    meta = configparser.ConfigParser()
    meta.read(PLUGIN_SOURCE / "metadata.txt", encoding="utf-8")
    return meta["general"]["version"]


def install_plugin(plugins_dir: Path, *, overwrite: bool) -> Path:
    """Copy the plugin into `plugins_dir` and record which geoseg it runs.

    The copy is built under a hidden name and renamed into place, so QGIS never
    sees half a plugin.

    Returns
    -------
    Path
        The installed plugin folder, ``plugins_dir / "geoseg_qgis"``.

    Raises
    ------
    OutputExistsError
        The plugin is installed there already and `overwrite` is false.
    """
    import secrets

    from geoseg.errors import OutputExistsError, OutputWriteError

    target = plugins_dir / PLUGIN_NAME
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass --overwrite to replace it")
    tmp = plugins_dir / f".{PLUGIN_NAME}.geoseg-tmp-{secrets.token_hex(4)}"
    old = tmp.with_name(tmp.name + "-old")
    try:
        plugins_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(PLUGIN_SOURCE, tmp, ignore=_IGNORED)
        # QGIS does not start from the user's shell, so its PATH rarely has this geoseg.
        command = [sys.executable, "-m", "geoseg"]
        (tmp / COMMAND_FILE).write_text(json.dumps(command) + "\n", encoding="utf-8")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    except OSError as exc:
        raise OutputWriteError(
            f"cannot install the QGIS plugin into {plugins_dir} ({exc.strerror or exc}); "
            "check the folder's permissions or pass another --plugins-dir"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


def zip_plugin(out_dir: Path, *, overwrite: bool) -> Path:
    """Write ``geoseg_qgis-<version>.zip`` (top-level folder ``geoseg_qgis/``) into `out_dir`.

    `out_dir` is created if missing.
    """
    import zipfile

    from geoseg.io.atomic import atomic_output

    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{PLUGIN_NAME}-{plugin_version()}.zip"
    files = sorted(
        p
        for p in PLUGIN_SOURCE.rglob("*")
        if p.is_file() and not _IGNORED("", list(p.relative_to(PLUGIN_SOURCE).parts))
    )
    with (
        atomic_output(dst, overwrite=overwrite) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf,
    ):
        for path in files:
            zf.write(path, Path(PLUGIN_NAME) / path.relative_to(PLUGIN_SOURCE))
    return dst


@click.command("qgis-plugin")
@click.option("--install", is_flag=True, help="Copy the plugin into a QGIS profile.")
@click.option(
    "--profile",
    default="default",
    show_default=True,
    help="QGIS profile to install into.",
)
@click.option(
    "--plugins-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Install into this plugins folder instead of the profile's.",
)
@click.option(
    "--zip",
    "zip_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write geoseg_qgis-VERSION.zip for the QGIS plugin repository into this folder.",
)
@overwrite_opt
def qgis_plugin(
    install: bool, profile: str, plugins_dir: Path | None, zip_dir: Path | None, overwrite: bool
) -> None:
    """Install the QGIS plugin (Processing provider 'geoseg'), or zip it.

    \b
      geoseg qgis-plugin --install                  # the default profile
      geoseg qgis-plugin --install --profile work
      geoseg qgis-plugin --zip dist/

    The installed plugin runs this geoseg (its Python, recorded at install
    time); a zip from the plugin repository runs the 'geoseg' on QGIS's PATH,
    or the one set in Processing > Options > Providers > geoseg.
    Without --install or --zip: where the plugin would go.
    """
    dest = plugins_dir if plugins_dir is not None else plugins_dir_of(profile)
    if not (install or zip_dir):
        click.echo(f"plugin source: {PLUGIN_SOURCE}")
        click.echo(f"plugins folder of profile {profile!r}: {dest}")
        click.echo("pass --install to copy it there, or --zip DIR")
        return
    if zip_dir is not None:
        click.echo(f"wrote {zip_plugin(zip_dir, overwrite=overwrite)}")
    if install:
        target = install_plugin(dest, overwrite=overwrite)
        click.echo(f"installed {PLUGIN_NAME} {plugin_version()} into {target}")
        click.echo(
            "restart QGIS and tick 'geoseg' in Plugins > Manage and Install Plugins > Installed; "
            "the algorithms are in the Processing Toolbox under geoseg"
        )
