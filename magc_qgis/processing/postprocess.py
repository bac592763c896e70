"""Post-processors: how results loaded by the Processing toolbox get their group and style.

They run on the main thread after Processing has added the layer. Instances must outlive
the algorithm run (Processing keeps only a C++ pointer), hence the class-level registry.
"""
from __future__ import annotations

from qgis.core import QgsProcessingContext, QgsProcessingLayerPostProcessorInterface

from ..layers import add_to_group, copy_style, style_difference


class ResultStyler(QgsProcessingLayerPostProcessorInterface):
    _alive: list[ResultStyler] = []

    def __init__(self, style_xml: str = "", difference_max: float | None = None) -> None:
        super().__init__()
        self.style_xml, self.difference_max = style_xml, difference_max

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if self.difference_max is not None:
            style_difference(layer, self.difference_max)
        else:
            copy_style(self.style_xml, layer)
        add_to_group(layer, context.project())

    @classmethod
    def attach(cls, context: QgsProcessingContext, layer_id: str, style_xml: str = "",
               difference_max: float | None = None) -> None:
        """Style ``layer_id`` when Processing loads it on completion (no-op otherwise)."""
        if not context.willLoadLayerOnCompletion(layer_id):
            return
        styler = cls(style_xml, difference_max)
        cls._alive.append(styler)
        context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(styler)
