"""geoseg for QGIS: a Processing provider that runs the user's own geoseg.

Installed with ``geoseg qgis-plugin --install``; see docs/qgis.md.
"""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication

from .provider import GeosegProvider


class GeosegPlugin:
    """Registers the provider; the plugin has no GUI of its own beyond the Toolbox."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.provider: GeosegProvider | None = None

    def initProcessing(self) -> None:
        self.provider = GeosegProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None


def classFactory(iface: Any) -> GeosegPlugin:
    """QGIS's entry point."""
    return GeosegPlugin(iface)
