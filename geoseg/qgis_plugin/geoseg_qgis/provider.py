"""The Processing provider "geoseg" and its setting: which geoseg to run."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import EXECUTABLE_SETTING, SegmentRaster, VectorizeClasses

ICON = Path(__file__).with_name("icon.png")


class GeosegProvider(QgsProcessingProvider):
    """Segment rasters and vectorize class rasters with the user's own geoseg."""

    def id(self) -> str:
        return "geoseg"

    def name(self) -> str:
        return "geoseg"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def load(self) -> bool:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting

        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(
            Setting(
                self.name(),
                EXECUTABLE_SETTING,
                "geoseg executable (empty: the geoseg that installed the plugin, else 'geoseg' "
                "on the PATH)",
                "",
                valuetype=Setting.FILE,
            )
        )
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        from processing.core.ProcessingConfig import ProcessingConfig

        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(SegmentRaster())
        self.addAlgorithm(VectorizeClasses())
