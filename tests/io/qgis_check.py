"""Open a GeoPackage in PyQGIS and report what QGIS sees, as JSON.

Run with Debian's system Python, which has PyQGIS (not the project
virtualenv, which must not be on ``PYTHONPATH``)::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/io/qgis_check.py OUT.gpkg EXPECT

EXPECT is a JSON object (or ``@file`` holding one)::

    {"layers": {"buildings": {"crs": "EPSG:32633", "count": 2,
                               "color": "#e31a1c", "outline_color": "#e31a1c",
                               "fields": ["class_id", "area_m2"]}}}

Every key of a layer's expectations is optional.  For each layer the script
loads ``PATH|layername=NAME`` with the "ogr" provider, exactly as QGIS does
when a user adds the layer, and checks validity, CRS, feature count, fields,
and that the default style stored in the file's ``layer_styles`` table was
applied on load: a single-symbol renderer whose fill colour is the expected
colour at 50 % opacity and whose outline is the expected outline colour.

It prints one JSON object: ``{"ok": bool, "qgis_version": str, "layers":
{name: {"ok": bool, "problems": [...], ...observed values...}}}`` and exits
with 0 when everything matched, 1 when something did not, 2 on bad usage.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# Imported after QT_QPA_PLATFORM is set: Qt reads it when QGIS loads.
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
)

FILL_ALPHA = 128


def _hex(color: Any) -> str:
    return f"#{color.red():02x}{color.green():02x}{color.blue():02x}"


def check_layer(path: str, name: str, expected: dict[str, Any]) -> dict[str, Any]:
    """Load one layer as QGIS would and compare it with `expected`."""
    layer = QgsVectorLayer(f"{path}|layername={name}", name, "ogr")
    result: dict[str, Any] = {"valid": layer.isValid(), "problems": []}
    problems: list[str] = result["problems"]
    if not layer.isValid():
        problems.append("QGIS could not load the layer")
        result["ok"] = False
        return result

    result["crs"] = layer.crs().authid()
    result["count"] = layer.featureCount()
    result["fields"] = [field.name() for field in layer.fields()]
    result["geometry_type"] = layer.geometryType()
    if "crs" in expected and result["crs"] != expected["crs"]:
        problems.append(f"CRS {result['crs']} != {expected['crs']}")
    if "count" in expected and result["count"] != expected["count"]:
        problems.append(f"feature count {result['count']} != {expected['count']}")
    missing = sorted(set(expected.get("fields", [])) - set(result["fields"]))
    if missing:
        problems.append(f"missing fields {missing}")

    # Styles the provider finds in layer_styles, and which one is the default.
    count, _ids, names, _descriptions, error = layer.listStylesInDatabase()
    # The first `count` entries are the styles of this layer.
    result["styles_in_database"] = list(names)[:count]
    if count < 1:
        problems.append(f"no style for the layer in layer_styles ({error})")

    # QGIS applies the default database style while constructing the layer
    # (LayerOptions.loadDefaultStyle is true); look at what it applied.
    renderer = layer.renderer()
    result["renderer"] = renderer.type() if renderer else None
    if not isinstance(renderer, QgsSingleSymbolRenderer):
        problems.append(f"renderer is {result['renderer']}, not singleSymbol")
    else:
        symbol = renderer.symbol()
        fill = symbol.color()
        result["fill_color"] = _hex(fill)
        result["fill_alpha"] = fill.alpha()
        symbol_layer = symbol.symbolLayer(0)
        outline = symbol_layer.strokeColor() if symbol_layer is not None else None
        result["outline_color"] = _hex(outline) if outline is not None else None
        result["outline_alpha"] = outline.alpha() if outline is not None else None
        if "color" in expected:
            if result["fill_color"] != expected["color"].lower():
                problems.append(f"fill colour {result['fill_color']} != {expected['color']}")
            if result["fill_alpha"] != FILL_ALPHA:
                problems.append(f"fill alpha {result['fill_alpha']} != {FILL_ALPHA}")
        if "outline_color" in expected:
            if result["outline_color"] != expected["outline_color"].lower():
                problems.append(
                    f"outline colour {result['outline_color']} != {expected['outline_color']}"
                )
            if result["outline_alpha"] != 255:
                problems.append(f"outline alpha {result['outline_alpha']} != 255")
    result["ok"] = not problems
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[1]
    spec = argv[2]
    expectations = json.loads(Path(spec[1:]).read_text() if spec.startswith("@") else spec)

    app = QgsApplication([], False)
    app.initQgis()
    try:
        layers = {
            name: check_layer(path, name, expected or {})
            for name, expected in expectations.get("layers", {}).items()
        }
    finally:
        app.exitQgis()
    report = {
        "ok": bool(layers) and all(r["ok"] for r in layers.values()),
        "qgis_version": Qgis.QGIS_VERSION,
        "layers": layers,
    }
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
