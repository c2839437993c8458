"""Run geoseg's Processing algorithms in real QGIS and report what QGIS ends up with, as JSON.

Run with Debian's system Python, which has PyQGIS (not the project virtualenv)::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis/qgis_driver.py SPEC

SPEC is a JSON object (or ``@file`` holding one)::

    {"plugins_dir": "/tmp/plugins",          # where geoseg_qgis is installed
     "plugin_zip": "geoseg_qgis-0.1.0.zip",  # optional: first unzip it there as QGIS does
     "jobs": [{"algorithm": "geoseg:segmentraster",
               "parameters": {"INPUT": "scene.tif", "OUTPUT": "out/scene.gpkg"},
               "via": "task",                # as the Toolbox runs it: a background task,
                                             # then loading the results; or "run" / "load"
                                             # (processing.run / runAndLoadResults)
               "cancel_at": 50.0,            # optional: Cancel once progress passes this %
               "open_output": true,          # optional: OUTPUT as the dialog passes it, with
                                             # "Open output file after running" (un)ticked
               "settings": {"GEOSEG_EXECUTABLE": "/bad/path"},   # optional
               "renders": [{"path": "classes.png", "layers": ["classes"],
                            "width": 128, "height": 128, "background": "#ffffff"}]}]}

The plugin is found, checked against this QGIS version, loaded and started as
QGIS does with a plugin that has a Processing provider (``qgis.utils``,
``pyplugin_installer``).  Each job starts from an empty project.
``renders`` draw the job's layers (``input``: the input raster, ``classes``: the
class raster, ``polygons``: the polygon layers; listed top first) over the
extent of the input with ``QgsMapRendererParallelJob`` into a PNG.

Prints one JSON object: ``{"qgis_version", "plugin": {...}, "provider": {...},
"jobs": [{"ok", "error", "results", "progress", "log", "layers": [...]}]}``.
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
    QgsLayerTree,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsPalettedRasterRenderer,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProject,
    QgsRasterLayer,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QEventLoop, QSize
from qgis.PyQt.QtGui import QColor


class Feedback(QgsProcessingFeedback):
    """Records what the algorithm tells the user; cancels once progress passes a mark."""

    def __init__(self, cancel_at: float | None) -> None:
        super().__init__()
        self.log: list[str] = []
        self.progress: list[float] = []
        self.cancel_at = cancel_at
        self.progressChanged.connect(self._on_progress)

    def _on_progress(self, value: float) -> None:
        self.progress.append(value)
        if self.cancel_at is not None and value >= self.cancel_at and not self.isCanceled():
            self.log.append(f"cancel at {value:.1f}%")
            self.cancel()

    def setProgressText(self, text: str) -> None:
        self.log.append(f"progress text: {text}")
        super().setProgressText(text)

    def pushInfo(self, info: str) -> None:
        self.log.append(info)
        super().pushInfo(info)

    def pushCommandInfo(self, info: str) -> None:
        self.log.append(f"command: {info}")
        super().pushCommandInfo(info)

    def reportError(self, error: str, fatalError: bool = False) -> None:
        self.log.append(f"error: {error}")
        super().reportError(error, fatalError)


def _hex(color: QColor) -> str:
    return color.name()


def describe_layer(layer: Any, node: Any) -> dict[str, Any]:
    parent = node.parent()
    out: dict[str, Any] = {
        "id": layer.id(),
        "name": layer.name(),
        "source": layer.source(),
        "valid": layer.isValid(),
        "crs": layer.crs().authid(),
        "group": parent.name() if parent is not None and QgsLayerTree.isGroup(parent) else None,
    }
    renderer = layer.renderer()
    out["renderer"] = renderer.type() if renderer else None
    if isinstance(layer, QgsVectorLayer):
        out["type"] = "vector"
        out["count"] = layer.featureCount()
        if isinstance(renderer, QgsSingleSymbolRenderer):
            symbol = renderer.symbol()
            out["fill_color"] = _hex(symbol.color())
            out["fill_alpha"] = symbol.color().alpha()
    elif isinstance(layer, QgsRasterLayer):
        out["type"] = "raster"
        if isinstance(renderer, QgsPalettedRasterRenderer):
            out["classes"] = [[int(c.value), _hex(c.color), c.label] for c in renderer.classes()]
    return out


def render(spec: dict[str, Any], roles: dict[str, list[Any]], extent_layer: Any) -> str:
    layers = [layer for role in spec["layers"] for layer in roles[role]]
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(extent_layer.crs())
    settings.setExtent(extent_layer.extent())
    settings.setOutputSize(QSize(int(spec["width"]), int(spec["height"])))
    settings.setBackgroundColor(QColor(spec.get("background", "#ffffff")))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    if not image.save(spec["path"], "PNG"):
        raise RuntimeError(f"could not save {spec['path']}")
    return str(spec["path"])


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    import processing
    from processing.core.ProcessingConfig import ProcessingConfig

    project = QgsProject.instance()
    project.clear()
    for name, value in job.get("settings", {}).items():
        ProcessingConfig.setSettingValue(name, value)
    feedback = Feedback(job.get("cancel_at"))
    result: dict[str, Any] = {"ok": False, "error": None, "results": None, "renders": []}
    via = job.get("via", "task")
    try:
        if via == "task":
            ok, results = run_as_task(job, feedback)
            errors = [line for line in feedback.log if line.startswith("error: ")]
            result["error"] = None if ok else errors[-1].removeprefix("error: ")
        else:
            runner = processing.runAndLoadResults if via == "load" else processing.run
            results = runner(job["algorithm"], dict(job["parameters"]), feedback=feedback)
            ok = results is not None
        result["ok"] = ok
        result["results"] = {k: str(v) for k, v in (results or {}).items()}
    except QgsProcessingException as exc:
        result["error"] = str(exc)
    finally:
        for name in job.get("settings", {}):
            ProcessingConfig.setSettingValue(name, "")
    result["progress"] = feedback.progress
    result["log"] = feedback.log
    result["canceled"] = feedback.isCanceled()
    # Not in this frame: a failed run's traceback keeps this frame's locals alive,
    # and a layer freed after exitQgis() crashes the interpreter's exit.
    describe_and_render(job, result)
    return result


def run_as_task(job: dict[str, Any], feedback: Feedback) -> tuple[bool, dict[str, Any]]:
    """Run as the Toolbox's dialog does: a task in the background, then load the results."""
    from processing.gui.Postprocessing import handleAlgorithmResults

    alg = QgsApplication.processingRegistry().createAlgorithmById(job["algorithm"])
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    context.setFeedback(feedback)
    parameters = dict(job["parameters"])
    if "open_output" in job:
        project = QgsProject.instance() if job["open_output"] else None
        parameters["OUTPUT"] = QgsProcessingOutputLayerDefinition(parameters["OUTPUT"], project)
    task = QgsProcessingAlgRunnerTask(alg, parameters, context, feedback)
    loop = QEventLoop()
    outcome: dict[str, Any] = {}

    def executed(ok: bool, results: dict[str, Any]) -> None:
        outcome.update(ok=ok, results=results)
        loop.quit()

    task.executed.connect(executed)
    QgsApplication.taskManager().addTask(task)
    loop.exec_()
    if outcome["ok"]:
        handleAlgorithmResults(alg, context, feedback)
    return outcome["ok"], outcome["results"]


def describe_and_render(job: dict[str, Any], result: dict[str, Any]) -> None:
    nodes = QgsProject.instance().layerTreeRoot().findLayers()
    result["layers"] = [describe_layer(node.layer(), node) for node in nodes]
    roles: dict[str, list[Any]] = {
        "polygons": [n.layer() for n in nodes if isinstance(n.layer(), QgsVectorLayer)],
        "classes": [n.layer() for n in nodes if isinstance(n.layer(), QgsRasterLayer)],
    }
    source = QgsRasterLayer(str(job["parameters"]["INPUT"]), "input", "gdal")
    roles["input"] = [source]
    for spec in job.get("renders", []):
        result["renders"].append(render(spec, roles, source))


METADATA_KEYS = (
    "name",
    "qgisMinimumVersion",
    "description",
    "about",
    "version",
    "author",
    "email",
    "repository",
    "tracker",
    "hasProcessingProvider",
)


def find_plugin(spec: dict[str, Any]) -> dict[str, Any]:
    """Unzip the plugin (if asked) and look for it as QGIS does at startup."""
    import qgis.utils
    from pyplugin_installer.unzip import unzip
    from pyplugin_installer.version_compare import isCompatible, pyQgisVersion

    if spec.get("plugin_zip"):
        unzip(spec["plugin_zip"], spec["plugins_dir"])
    qgis.utils.plugin_paths = [spec["plugins_dir"]]
    qgis.utils.updateAvailablePlugins()
    found = "geoseg_qgis" in qgis.utils.available_plugins
    metadata = {k: qgis.utils.pluginMetadata("geoseg_qgis", k) for k in METADATA_KEYS}
    minimum = metadata["qgisMinimumVersion"]
    return {
        "found": found,
        "metadata": metadata,
        "compatible": found and isCompatible(pyQgisVersion(), minimum, minimum[0] + ".99"),
    }


def start_provider() -> dict[str, Any]:
    import qgis.utils
    from processing.core.Processing import Processing
    from processing.core.ProcessingConfig import ProcessingConfig

    Processing.initialize()
    started = qgis.utils.loadPlugin("geoseg_qgis") and qgis.utils.startProcessingPlugin(
        "geoseg_qgis"
    )
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("geoseg")
    out: dict[str, Any] = {"started": bool(started), "loaded": provider is not None}
    if provider is not None:
        out["name"] = provider.name()
        out["algorithms"] = sorted(a.id() for a in provider.algorithms())
        alg = registry.createAlgorithmById("geoseg:segmentraster")
        out["model_options"] = alg.parameterDefinition("MODEL").options()
        out["settings"] = sorted(
            name for name, s in ProcessingConfig.settings.items() if s.group == "geoseg"
        )
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1][1:]).read_text() if argv[1].startswith("@") else argv[1])

    app = QgsApplication([], False)
    app.initQgis()
    python_dir = Path(QgsApplication.pkgDataPath()) / "python"
    sys.path[:0] = [spec["plugins_dir"], str(python_dir), str(python_dir / "plugins")]
    try:
        report = {"qgis_version": Qgis.QGIS_VERSION, "plugin": find_plugin(spec)}
        report["provider"] = start_provider()
        if report["provider"]["loaded"]:
            report["jobs"] = [run_job(job) for job in spec.get("jobs", [])]
        QgsProject.instance().clear()
    finally:
        app.exitQgis()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
