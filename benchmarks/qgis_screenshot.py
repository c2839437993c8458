"""Render docs/qgis_render.png: geoseg's Segment raster run in real QGIS, its layers on the map.

Makes a 1 m sample scene, installs the plugin into a temporary plugins folder with
``geoseg qgis-plugin --install``, and has QGIS (Debian's PyQGIS, offscreen) run
``geoseg:segmentraster`` as the Processing Toolbox does, through the driver the
tests use (``tests/qgis/qgis_driver.py``).  QGIS renders three panels with
``QgsMapRendererParallelJob``: the input, the input under the styled polygon
layers, and the class raster with its colour table.  Usage::

    python benchmarks/qgis_screenshot.py [--size 384] [--seed 3] [-o docs/qgis_render.png]

Needs /usr/bin/python3 with PyQGIS (``.ci/install-qgis.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "qgis" / "qgis_driver.py"
PANELS = (["input"], ["polygons", "input"], ["classes"])
GAP = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384, help="Scene and panel edge in pixels.")
    parser.add_argument("--seed", type=int, default=3, help="Scene seed.")
    parser.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "qgis_render.png")
    args = parser.parse_args()

    from geoseg.cli.qgis import install_plugin
    from geoseg.synth import make_sample_scene

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        scene = make_sample_scene(d / "scene", size=args.size, seed=args.seed, pixel_size=1.0)
        install_plugin(d / "plugins", overwrite=False)
        (d / "out").mkdir()
        renders = [
            {
                "path": str(d / f"panel{i}.png"),
                "layers": layers,
                "width": args.size,
                "height": args.size,
            }
            for i, layers in enumerate(PANELS)
        ]
        job = {
            "algorithm": "geoseg:segmentraster",
            "parameters": {"INPUT": str(scene.image), "OUTPUT": str(d / "out" / "scene.gpkg")},
            "renders": renders,
        }
        spec = d / "spec.json"
        spec.write_text(json.dumps({"plugins_dir": str(d / "plugins"), "jobs": [job]}))
        runtime = d / "xdg-runtime"
        runtime.mkdir(mode=0o700)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
        }
        env.update(QT_QPA_PLATFORM="offscreen", HOME=tmp, XDG_RUNTIME_DIR=str(runtime))
        proc = subprocess.run(
            ["/usr/bin/python3", str(DRIVER), f"@{spec}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            sys.exit(f"QGIS failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.splitlines()[-1])["jobs"][0]
        if not result["ok"]:
            sys.exit(f"geoseg:segmentraster failed: {result['error']}")
        panels = [Image.open(r["path"]).convert("RGB") for r in renders]
    image = Image.new("RGB", (len(panels) * (args.size + GAP) - GAP, args.size), "white")
    for i, panel in enumerate(panels):
        image.paste(panel, (i * (args.size + GAP), 0))
    # 256 colours keep the page light (docs images stay under 300 KB); the class colours are exact.
    image.quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        args.output, optimize=True
    )
    kb = args.output.stat().st_size / 1024
    print(f"wrote {args.output} ({image.width}x{image.height}, {kb:.0f} KB)")
    for layer in result["layers"]:
        print(f"  {layer['name']:<14} {layer['type']:<6} {layer['renderer']}")


if __name__ == "__main__":
    main()
