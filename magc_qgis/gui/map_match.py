"""Which project layers made the map of a .magc file? (for Decompress… pre-selection)

The file stores only a fingerprint of the rasterised map. Candidates, cheapest first: the
layers remembered when this QGIS compressed a file with that fingerprint; no layers; each
single vector layer that overlaps the file with its default class assignment. A candidate
is accepted only when its fingerprint, computed by the library, matches.
"""
from __future__ import annotations

from osgeo import osr
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)

from .. import settings
from ..processing.snapshot import map_specs
from .widgets import default_assignment

MAX_SINGLE_LAYERS = 8
MAX_GUESS_PIXELS = 16_000_000  # beyond this, fingerprinting every layer would freeze the dialog


def header_grid(info: dict):
    from magc.maps import Grid

    crs = info.get("crs") or ""
    wkt = ""
    if crs:
        srs = osr.SpatialReference()
        srs.SetFromUserInput(crs)
        wkt = srs.ExportToWkt()
    return Grid(info["width"], info["height"], tuple(info["geotransform"]), wkt)


def header_extent(info: dict) -> QgsRectangle:
    g, w, h = info["geotransform"], info["width"], info["height"]
    xs = [g[0], g[0] + g[1] * w + g[2] * h]
    ys = [g[3], g[3] + g[4] * w + g[5] * h]
    return QgsRectangle(min(xs), min(ys), max(xs), max(ys))


def fingerprint_of(choice: list[tuple[QgsVectorLayer, str]], info: dict, kind: str) -> str | None:
    """Hex fingerprint of the map these layers give on the file's grid; None if they cannot."""
    from magc.errors import MagcError
    from magc.maps import open_map

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    try:
        specs = map_specs([layer for layer, _ in choice], ";".join(a for _, a in choice), context) if choice else []
        return open_map(specs, header_grid(info), kind).fingerprint().hex()
    except (MagcError, QgsProcessingException, RuntimeError):
        return None


def _overlaps(layer: QgsVectorLayer, info: dict) -> bool:
    crs = QgsCoordinateReferenceSystem(info.get("crs") or "")
    extent = layer.extent()
    if crs.isValid() and layer.crs().isValid() and layer.crs() != crs:
        try:
            extent = QgsCoordinateTransform(layer.crs(), crs, QgsProject.instance()).transformBoundingBox(extent)
        except Exception:  # a transform can fail far outside a projection's domain
            return False
    return extent.intersects(header_extent(info))


def candidates(info: dict, layers: list[QgsVectorLayer]) -> list[list[tuple[QgsVectorLayer, str]]]:
    out: list[list[tuple[QgsVectorLayer, str]]] = []
    remembered = settings.remembered_map(info["map_fingerprint"]) or []
    by_source = {layer.source(): layer for layer in layers}
    chosen = [(by_source[source], assignment) for source, assignment in remembered if source in by_source]
    if chosen and len(chosen) == len(remembered):
        out.append(chosen)
    out.append([])
    if info["width"] * info["height"] > MAX_GUESS_PIXELS:
        return out
    overlapping = [layer for layer in layers if _overlaps(layer, info)][:MAX_SINGLE_LAYERS]
    out += [[(layer, default_assignment(layer))] for layer in overlapping]
    return out


def match_layers(info: dict, layers: list[QgsVectorLayer], kind: str) -> list[tuple[QgsVectorLayer, str]] | None:
    """The first candidate whose map fingerprint equals the file's, or None."""
    if info.get("map_embedded"):
        return []
    for choice in candidates(info, layers):
        if fingerprint_of(choice, info, kind) == info["map_fingerprint"]:
            return choice
    return None
