"""The Processing algorithms: each builds a geoseg command line, runs it and loads the results."""

from __future__ import annotations

import functools
import json
import shlex
import uuid
from pathlib import Path
from typing import Any, ClassVar

from qgis.core import (
    QgsLayerTree,
    QgsLayerTreeLayer,
    QgsPalettedRasterRenderer,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingOutputRasterLayer,
    QgsProcessingParameterCrs,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from .runner import GeosegRunError, bundled_models, geoseg_command, run_geoseg

#: The provider's setting (Processing > Options > Providers > geoseg).
EXECUTABLE_SETTING = "GEOSEG_EXECUTABLE"

DEVICES = ["auto", "cpu", "cuda", "mps"]
TTA = ["none", "flips", "d4"]
GPKG_FILTER = "GeoPackage (*.gpkg *.GPKG)"
YAML_FILTER = "YAML (*.yaml *.yml)"


def configured_executable() -> str:
    """The geoseg executable set in the provider's settings ("" when not set)."""
    from processing.core.ProcessingConfig import ProcessingConfig

    return str(ProcessingConfig.getSetting(EXECUTABLE_SETTING) or "")


@functools.lru_cache(maxsize=4)
def _models(command: tuple[str, ...]) -> list[str]:
    return bundled_models(command)


def _command() -> list[str]:
    try:
        return geoseg_command(configured_executable())
    except GeosegRunError as exc:
        raise QgsProcessingException(str(exc)) from exc


def _advanced(param: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return param


class _GeosegAlgorithm(QgsProcessingAlgorithm):
    """What both algorithms share: running geoseg, reporting it, loading the results."""

    def group(self) -> str:
        return ""

    def groupId(self) -> str:
        return ""

    def createInstance(self) -> QgsProcessingAlgorithm:
        return type(self)()

    def _raster_path(self, parameters: dict[str, Any], name: str, context: Any) -> str:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"geoseg reads rasters GDAL opens; {layer.name()} is a {layer.providerType()} "
                "layer: save it as a GeoTIFF first (Raster > Conversion > Translate)"
            )
        return str(layer.source())

    def _gpkg_path(self, parameters: dict[str, Any], context: Any) -> str:
        dst = str(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        if Path(dst).suffix.lower() != ".gpkg":
            raise QgsProcessingException(f"OUTPUT must be a GeoPackage (.gpkg), got {dst}")
        return dst

    def _run(
        self,
        args: list[str],
        outputs: list[str],
        feedback: Any,
        stages: dict[str, tuple[float, float]],
    ) -> None:
        """Run geoseg; `stages` maps its stages to ranges of the progress bar (percent)."""
        command = _command()
        feedback.pushCommandInfo(shlex.join([*command, *args, "--progress", "json"]))
        shown: list[str] = []

        def on_progress(stage: str, done: int, total: int) -> None:
            if not shown or shown[-1] != stage:
                shown.append(stage)
                feedback.setProgressText(f"geoseg: {stage}")
            low, high = stages.get(stage, (0.0, 100.0))
            feedback.setProgress(low + (high - low) * done / max(total, 1))

        try:
            run_geoseg(
                command,
                args,
                outputs=outputs,
                on_progress=on_progress,
                on_message=feedback.pushInfo,
                is_cancelled=feedback.isCanceled,
            )
        except GeosegRunError as exc:
            raise QgsProcessingException(str(exc)) from exc

    def _load_on_completion(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        gpkg: str,
        classes: str | None = None,
    ) -> None:
        """Have the polygon layers (and the class raster below them) added to the project.

        Processing loads them after the run, in a group named after the
        GeoPackage, when the run loads results at all (the Toolbox does unless
        "Open output file after running algorithm" is unticked; ``processing.run``
        does not).
        """
        from osgeo import ogr

        output = parameters.get("OUTPUT")
        project = context.project()
        if isinstance(output, QgsProcessingOutputLayerDefinition):
            project = output.destinationProject
        if project is None:
            return

        dataset = ogr.Open(gpkg)
        names = [
            dataset.GetLayer(i).GetName()
            for i in range(dataset.GetLayerCount())
            if dataset.GetLayer(i).GetGeomType() != ogr.wkbNone
        ]
        dataset = None
        run = uuid.uuid4().hex
        title = Path(gpkg).stem
        for rank, name in enumerate(names):
            details = QgsProcessingContext.LayerDetails(
                name, project, "OUTPUT", QgsProcessingUtils.LayerHint.Vector
            )
            details.setPostProcessor(_ResultLayer(run, title, rank))
            context.addLayerToLoadOnCompletion(f"{gpkg}|layername={name}", details)
        if classes is not None:
            details = QgsProcessingContext.LayerDetails(
                Path(classes).stem,
                project,
                "CLASSES",
                QgsProcessingUtils.LayerHint.Raster,
            )
            details.setPostProcessor(_ResultLayer(run, title, len(names)))
            context.addLayerToLoadOnCompletion(classes, details)


class SegmentRaster(_GeosegAlgorithm):
    """``geoseg predict``: a raster to a class raster and a styled GeoPackage."""

    def name(self) -> str:
        return "segmentraster"

    def displayName(self) -> str:
        return "Segment raster"

    def shortHelpString(self) -> str:
        return (
            "Segments a raster tile by tile into buildings, vegetation and cropland with "
            "'geoseg predict'. Writes the polygons as a GeoPackage (one styled layer per class) "
            "and the class raster beside it as NAME_classes.tif; both are added to the project "
            "with their styles.\n\nLeave tile and overlap empty to use the model's."
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        try:
            self._model_names = _models(tuple(geoseg_command(configured_executable())))
        except GeosegRunError:
            self._model_names = ["default"]
        default = self._model_names.index("default") if "default" in self._model_names else 0
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.addParameter(
            QgsProcessingParameterEnum(
                "MODEL", "Bundled model", options=self._model_names, defaultValue=default
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                "CHECKPOINT",
                "Checkpoint folder (instead of the bundled model)",
                behavior=QgsProcessingParameterFile.Folder,
                optional=True,
            )
        )
        for name, label in (("TILE", "Tile edge in pixels"), ("OVERLAP", "Tile overlap in pixels")):
            self.addParameter(
                QgsProcessingParameterNumber(
                    name, label, QgsProcessingParameterNumber.Integer, optional=True, minValue=0
                )
            )
        self.addParameter(
            QgsProcessingParameterString(
                "BANDS", "Bands in the model's order, e.g. 3,2,1", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum("DEVICE", "Device", options=DEVICES, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                "TTA",
                "Test-time augmentation (flips: 4 passes, d4: 8)",
                options=TTA,
                defaultValue=0,
            )
        )
        self.addParameter(
            _advanced(
                QgsProcessingParameterFile(
                    "CONFIG",
                    "Clean-up settings per class (YAML)",
                    optional=True,
                    fileFilter=YAML_FILTER,
                )
            )
        )
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Polygons", GPKG_FILTER))
        self.addOutput(QgsProcessingOutputRasterLayer("CLASSES", "Classes"))

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: Any
    ) -> dict[str, Any]:
        src = self._raster_path(parameters, "INPUT", context)
        dst = self._gpkg_path(parameters, context)
        classes = str(Path(dst).with_name(Path(dst).stem + "_classes.tif"))
        checkpoint = self.parameterAsFile(parameters, "CHECKPOINT", context)
        model = checkpoint or self._model_names[self.parameterAsEnum(parameters, "MODEL", context)]
        args = ["predict", src, "-o", dst, "--model", model, "--overwrite"]
        args += ["--device", DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]]
        args += ["--tta", TTA[self.parameterAsEnum(parameters, "TTA", context)]]
        for name in ("TILE", "OVERLAP"):
            if parameters.get(name) not in (None, ""):
                args += [f"--{name.lower()}", str(self.parameterAsInt(parameters, name, context))]
        bands = self.parameterAsString(parameters, "BANDS", context).strip()
        if bands:
            args += ["--bands", bands]
        config = self.parameterAsFile(parameters, "CONFIG", context)
        if config:
            args += ["--config", config]
        self._run(args, [dst, classes], feedback, {"predict": (0, 85), "vectorize": (85, 100)})
        self._load_on_completion(parameters, context, dst, classes)
        return {"OUTPUT": dst, "CLASSES": classes}


class VectorizeClasses(_GeosegAlgorithm):
    """``geoseg vectorize``: a class raster to a styled GeoPackage."""

    def name(self) -> str:
        return "vectorizeclasses"

    def displayName(self) -> str:
        return "Vectorize class raster"

    def shortHelpString(self) -> str:
        return (
            "Polygonizes a class raster (such as Segment raster writes) with 'geoseg vectorize' "
            "into a GeoPackage with one styled layer per class, cleaned up per class as the "
            "model's card says, or as a clean-up YAML says (style, min_area_m2, "
            "fill_holes_below_m2, simplify_tolerance_m per class name)."
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class raster"))
        self.addParameter(
            QgsProcessingParameterFile(
                "CONFIG",
                "Clean-up settings per class (YAML)",
                optional=True,
                fileFilter=YAML_FILTER,
            )
        )
        self.addParameter(
            QgsProcessingParameterCrs("DST_CRS", "CRS of the polygons", optional=True)
        )
        self.addParameter(
            _advanced(
                QgsProcessingParameterRasterLayer(
                    "CONFIDENCE",
                    "Probabilities raster (mean confidence per polygon)",
                    optional=True,
                )
            )
        )
        self.addParameter(
            _advanced(
                QgsProcessingParameterString(
                    "MODEL",
                    "Model whose classes the raster holds, if it does not say",
                    optional=True,
                )
            )
        )
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Polygons", GPKG_FILTER))

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: Any
    ) -> dict[str, Any]:
        src = self._raster_path(parameters, "INPUT", context)
        dst = self._gpkg_path(parameters, context)
        args = ["vectorize", src, "-o", dst, "--overwrite"]
        config = self.parameterAsFile(parameters, "CONFIG", context)
        if config:
            args += ["--config", config]
        crs = self.parameterAsCrs(parameters, "DST_CRS", context)
        if crs.isValid():
            args += ["--dst-crs", crs.authid() or crs.toWkt()]
        if parameters.get("CONFIDENCE"):
            args += ["--confidence", self._raster_path(parameters, "CONFIDENCE", context)]
        model = self.parameterAsString(parameters, "MODEL", context).strip()
        if model:
            args += ["--model", model]
        self._run(args, [dst], feedback, {"vectorize": (0, 100)})
        self._load_on_completion(parameters, context, dst)
        return {"OUTPUT": dst}


class _ResultLayer(QgsProcessingLayerPostProcessorInterface):
    """Styles a loaded result layer and files it in its run's group, polygons over the raster."""

    # Processing keeps only a pointer to a post-processor: keep each one alive here.
    _alive: ClassVar[list[_ResultLayer]] = []

    def __init__(self, run: str, title: str, rank: int) -> None:
        super().__init__()
        self.run, self.title, self.rank = run, title, rank
        _ResultLayer._alive.append(self)

    def postProcessLayer(self, layer: Any, context: Any, feedback: Any) -> None:
        if isinstance(layer, QgsVectorLayer):
            # Processing loads layers without their default style: take it from layer_styles.
            layer.loadDefaultStyle()
        elif isinstance(layer, QgsRasterLayer):
            _label_classes(layer)
        layer.setCustomProperty("geoseg/rank", self.rank)
        root = (layer.project() or QgsProject.instance()).layerTreeRoot()
        node = root.findLayer(layer.id())
        if node is None:
            return
        parent = node.parent()
        group = next(
            (
                child
                for child in parent.children()
                if QgsLayerTree.isGroup(child) and child.customProperty("geoseg/run") == self.run
            ),
            None,
        )
        if group is None:
            group = parent.insertGroup(parent.children().index(node), self.title)
            group.setCustomProperty("geoseg/run", self.run)
        above = sum(
            1
            for child in group.children()
            if isinstance(child, QgsLayerTreeLayer)
            and child.layer() is not None
            and int(child.layer().customProperty("geoseg/rank", 0)) < self.rank
        )
        group.insertChildNode(above, node.clone())
        parent.removeChildNode(node)


def _label_classes(layer: QgsRasterLayer) -> None:
    """Show the class raster's colour table with the class names geoseg wrote into it."""
    from osgeo import gdal

    dataset = gdal.Open(layer.source())
    text = dataset.GetMetadataItem("GEOSEG_CLASSES") if dataset is not None else None
    if not text:
        return
    classes = [
        QgsPalettedRasterRenderer.Class(int(c["id"]), QColor(c["color"]), str(c["name"]))
        for c in json.loads(text)
    ]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes))
    layer.triggerRepaint()
