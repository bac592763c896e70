"""What every MAGC algorithm shares: identity, icon, help, dependency gate, map snapshot."""
from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingFeedback
from qgis.PyQt.QtGui import QIcon

from .. import deps
from ..paths import icon_path
from . import params
from .postprocess import ResultStyler
from .snapshot import map_specs


class MagcAlgorithm(QgsProcessingAlgorithm):
    """Declare (initAlgorithm), snapshot (prepareAlgorithm), process (processAlgorithm), report."""

    NAME = ""
    DISPLAY = ""
    HELP = ""

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802
        return self.DISPLAY

    def shortHelpString(self) -> str:  # noqa: N802
        return self.HELP

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def createInstance(self):  # noqa: N802
        return type(self)()

    def flags(self):
        return super().flags() | QgsProcessingAlgorithm.FlagCanCancel

    def canExecute(self):  # noqa: N802
        missing = deps.quick_check()
        if missing:
            return False, "MAGC cannot run: missing Python packages " + ", ".join(missing) + \
                ". Open Raster > MAGC > Settings… to install them."
        return True, ""

    def snapshot_maps(self, parameters: dict, context: QgsProcessingContext) -> list[str]:
        """Map layers as library specs, taken on the main thread."""
        layers = self.parameterAsLayerList(parameters, params.MAPS, context)
        classes = self.parameterAsString(parameters, params.MAP_CLASSES, context)
        return map_specs(layers, classes, context)

    @staticmethod
    def load_on_completion(context: QgsProcessingContext, path: str, name: str, output: str, style_xml: str = "",
                           difference_max: float | None = None) -> None:
        """Ask Processing to load a result that is not a layer destination parameter, styled."""
        if context.project() is None:
            return
        context.addLayerToLoadOnCompletion(path, QgsProcessingContext.LayerDetails(name, context.project(), output))
        ResultStyler.attach(context, path, style_xml, difference_max)

    @staticmethod
    def report(feedback: QgsProcessingFeedback, lines: dict) -> None:
        for key, value in lines.items():
            feedback.pushInfo(f"{key}: {value}")
