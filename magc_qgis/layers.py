"""Adding results to the project (main thread only): the reconstructions group, styles.

Used by the Processing post-processors (toolbox runs) and by the dialogs' task handlers,
so a result looks the same whichever way it was produced.
"""
from __future__ import annotations

from qgis.core import (
    QgsColorRampShader,
    QgsMapLayer,
    QgsMapLayerStyle,
    QgsProject,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)

GROUP = "MAGC reconstructions"


def reconstructions_group(project: QgsProject | None = None):
    root = (project or QgsProject.instance()).layerTreeRoot()
    return root.findGroup(GROUP) or root.insertGroup(0, GROUP)


def add_to_group(layer: QgsMapLayer, project: QgsProject | None = None) -> QgsMapLayer:
    """Give ``layer`` to the project (which then owns it) inside the reconstructions group."""
    project = project or QgsProject.instance()
    if project.mapLayer(layer.id()) is None:
        project.addMapLayer(layer, False)
    group = reconstructions_group(project)
    root = project.layerTreeRoot()
    node = root.findLayer(layer.id())
    if node is not None and node.parent() is not group:
        clone = node.clone()
        group.insertChildNode(0, clone)
        node.parent().removeChildNode(node)
    elif node is None:
        group.insertLayer(0, layer)
    return layer


def copy_style(style_xml: str, layer: QgsRasterLayer) -> bool:
    """Apply the original's style when it fits (same band count); else keep QGIS's default."""
    if not style_xml:
        return False
    style = QgsMapLayerStyle(style_xml)
    before = layer.renderer().clone() if layer.renderer() else None
    if not style.writeToLayer(layer):
        return False
    renderer = layer.renderer()
    if renderer is not None and max(renderer.usesBands() or [1]) > layer.bandCount():
        if before is not None:
            layer.setRenderer(before)
        return False
    layer.triggerRepaint()
    return True


def style_of(layer: QgsMapLayer | None) -> str:
    if layer is None:
        return ""
    style = QgsMapLayerStyle()
    style.readFromLayer(layer)
    return style.xmlData()


def add_reconstruction(path: str, name: str, style_xml: str = "", project: QgsProject | None = None) -> QgsRasterLayer | None:
    layer = QgsRasterLayer(path, name)
    if not layer.isValid():
        return None
    copy_style(style_xml, layer)
    return add_to_group(layer, project)


def style_difference(layer: QgsRasterLayer, maximum: float) -> None:
    """Black (no change) to bright (large error), transparent where the original has no data."""
    ramp = QgsStyle.defaultStyle().colorRamp("Magma") or QgsStyle.defaultStyle().colorRamp("Reds")
    shader_function = QgsColorRampShader(0.0, max(maximum, 1e-6), ramp)
    shader_function.classifyColorRamp(8)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(shader_function)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(max(maximum, 1e-6))
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def add_difference(path: str, name: str, maximum: float, project: QgsProject | None = None) -> QgsRasterLayer | None:
    layer = QgsRasterLayer(path, name)
    if not layer.isValid():
        return None
    style_difference(layer, maximum)
    return add_to_group(layer, project)
