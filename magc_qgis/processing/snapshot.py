"""Layer snapshots taken in ``prepareAlgorithm`` (main thread), as QGIS core does it.

The worker thread must not touch live layers. What it gets instead are plain strings:
a file path GDAL/OGR can open, the CRS as WKT, the extent, the style as XML. Layers that
are not plain files on disk (memory, database, filtered, one geometry type of a mixed
file) are exported to a temporary GeoPackage here; a raster whose CRS in QGIS differs from
its file's (the user overrode it) is wrapped in a VRT carrying the CRS the user sees.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from osgeo import gdal, ogr
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsMapLayerStyle,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

CLASS_NAMES = ("background", "building", "road", "water", "vegetation")


@dataclass
class RasterSnapshot:
    path: str
    name: str
    crs_wkt: str
    extent: QgsRectangle
    width: int
    height: int
    style_xml: str


def _temporary(name: str, suffix: str) -> str:
    return os.path.join(QgsProcessingUtils.tempFolder(), f"{name}_{uuid.uuid4().hex[:8]}{suffix}")


def raster_snapshot(layer: QgsRasterLayer | None, what: str = "raster") -> RasterSnapshot:
    if layer is None or not layer.isValid():
        raise QgsProcessingException(f"the {what} layer is missing or invalid")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"layer '{layer.name()}' is a {layer.providerType()} layer; MAGC reads files: export it to GeoTIFF "
            "(right click > Export > Save As…) and use that")
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or layer.source()
    if not path.startswith("/vsi") and not os.path.isfile(path):
        raise QgsProcessingException(f"the file of layer '{layer.name()}' does not exist: {path}")
    crs_wkt = layer.crs().toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL) if layer.crs().isValid() else ""
    style = QgsMapLayerStyle()
    style.readFromLayer(layer)
    return RasterSnapshot(_with_layer_crs(path, layer), layer.name(), crs_wkt, QgsRectangle(layer.extent()),
                          layer.width(), layer.height(), style.xmlData())


def _with_layer_crs(path: str, layer: QgsRasterLayer) -> str:
    """``path`` itself, or a VRT over it when QGIS shows it in another CRS than its file says."""
    if not layer.crs().isValid():
        return path
    dataset = gdal.OpenEx(path, gdal.OF_RASTER)
    file_wkt = dataset.GetProjection() if dataset is not None else ""
    dataset = None
    if file_wkt and QgsCoordinateReferenceSystem.fromWkt(file_wkt) == layer.crs():
        return path
    vrt = _temporary("crs_override", ".vrt")
    gdal.Translate(vrt, path, format="VRT", outputSRS=layer.crs().toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL))
    return vrt


def parse_assignments(text: str | None, count: int) -> list[str]:
    """One library option string per layer: ``|class=X``, ``|field=F`` or '' (auto)."""
    text = (text or "").strip()
    entries = [e.strip() for e in text.split(";")] if text else [""]
    if len(entries) == 1:
        entries *= count
    if len(entries) != count:
        raise QgsProcessingException(
            f"{len(entries)} class assignments for {count} map layers: give one per layer (';'-separated) or one for all")
    return [_assignment(e) for e in entries]


def _assignment(entry: str) -> str:
    if entry in ("", "auto"):
        return ""
    if entry in CLASS_NAMES:
        return f"|class={entry}"
    key, _, value = entry.partition("=")
    if key == "class" and value in CLASS_NAMES:
        return f"|class={value}"
    if key == "field" and value:
        return f"|field={value}"
    raise QgsProcessingException(
        f"class assignment {entry!r} not understood: use class=NAME ({', '.join(CLASS_NAMES)}), field=FIELD or auto")


def map_specs(layers: list[QgsVectorLayer], assignments: str | None, context: QgsProcessingContext) -> list[str]:
    """Library map specs ``PATH[|layername=N][|class=X|field=F]`` for the chosen layers."""
    options = parse_assignments(assignments, len(layers))
    return [vector_source(layer, context) + option for layer, option in zip(layers, options)]


def vector_source(layer: QgsVectorLayer, context: QgsProcessingContext) -> str:
    """``path[|layername=NAME]`` of a plain OGR file, else of a temporary GeoPackage copy."""
    if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise QgsProcessingException("a map layer is missing or invalid")
    if layer.providerType() == "ogr" and not layer.subsetString():
        parts = QgsProviderRegistry.instance().decodeUri("ogr", layer.source())
        path = parts.get("path") or ""
        if os.path.isfile(path) and not parts.get("geometryType") and not parts.get("subset"):
            name = parts.get("layerName") or _layer_name(path, parts.get("layerId"))
            return path + (f"|layername={name}" if name else "")
    return _export(layer, context)


def _layer_name(path: str, layer_id) -> str | None:
    if layer_id in (None, 0, "0") or layer_id != layer_id:  # NULL / 0: the first layer is the default
        return None
    source = ogr.Open(path)
    try:
        return source.GetLayer(int(layer_id)).GetName()
    finally:
        source = None


def _export(layer: QgsVectorLayer, context: QgsProcessingContext) -> str:
    path = _temporary("map", ".gpkg")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = "map"
    error, message, _, _ = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, context.transformContext(), options)
    if error != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"cannot copy map layer '{layer.name()}' for MAGC: {message}")
    return f"{path}|layername=map"
