"""The user's vector layers as classified areal geometries on the raster's CRS, read region by region.

Class schema of rasterised maps (``CLASS_SCHEMA``)::

    0 background   everything not covered below (bare land, unlabelled)
    1 building     polygons
    2 road         polygons, or lines buffered to a width (``ROAD_WIDTHS_M``)
    3 water        polygons, or lines (waterways) buffered to ``WATERWAY_WIDTH_M``
    4 vegetation   polygons

Where features overlap, the later class in ``BURN_ORDER`` wins (a building over a road over
water over vegetation). Class assignment per layer is explicit (``MapLayerSpec``): a fixed
class for the whole layer, a field whose values are schema names, class ids or
OpenStreetMap tag values (``OSM_VALUE_CLASSES``), or, by default, detection of a ``class``
field or of OpenStreetMap tag fields (``building``, ``highway``, ``natural`` ...,
``fclass`` of Geofabrik shapefiles).
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from osgeo import ogr, osr
import shapely
from shapely import wkb as shapely_wkb
from shapely.geometry.base import BaseGeometry

from .errors import InputError, UsageError

ogr.UseExceptions()
osr.UseExceptions()

CLASS_SCHEMA: dict[int, str] = {0: "background", 1: "building", 2: "road", 3: "water", 4: "vegetation"}
CLASS_IDS: dict[str, int] = {name: cid for cid, name in CLASS_SCHEMA.items()}
BURN_ORDER = ["vegetation", "water", "road", "building"]

ROAD_WIDTHS_M: dict[str, float] = {
    "motorway": 24.0, "trunk": 20.0, "primary": 16.0, "secondary": 12.0, "tertiary": 10.0,
    "residential": 8.0, "unclassified": 7.0, "service": 5.0, "track": 4.0, "footway": 2.0,
    "path": 2.0, "cycleway": 2.0,
}
DEFAULT_ROAD_WIDTH_M = 8.0
WATERWAY_WIDTH_M = 10.0

OSM_VALUE_CLASSES: dict[str, str] = {
    **{v: "road" for v in ROAD_WIDTHS_M},
    **{f"{v}_link": "road" for v in ("motorway", "trunk", "primary", "secondary", "tertiary")},
    "living_street": "road", "pedestrian": "road", "road": "road", "parking": "road",
    "building": "building", "house": "building", "residential_building": "building", "commercial": "building",
    "industrial": "building", "apartments": "building", "roof": "building",
    "water": "water", "reservoir": "water", "river": "water", "riverbank": "water", "stream": "water",
    "canal": "water", "lake": "water", "pond": "water", "basin": "water", "wetland": "water", "bay": "water",
    "coastline": "water", "sea": "water",
    "forest": "vegetation", "wood": "vegetation", "grass": "vegetation", "grassland": "vegetation",
    "meadow": "vegetation", "park": "vegetation", "scrub": "vegetation", "farmland": "vegetation",
    "orchard": "vegetation", "vineyard": "vegetation", "garden": "vegetation", "heath": "vegetation",
    "nature_reserve": "vegetation", "recreation_ground": "vegetation", "cemetery": "vegetation",
    "allotments": "vegetation", "golf_course": "vegetation", "mangrove": "vegetation", "vegetation": "vegetation",
}
# An OSM key whose mere presence decides the class (unless the value is "no").
OSM_KEY_CLASSES: dict[str, str] = {"building": "building", "highway": "road", "waterway": "water"}
OSM_TAG_FIELDS = ("fclass", "building", "highway", "waterway", "natural", "landuse", "leisure", "water", "type")


@dataclass
class MapLayerSpec:
    """One vector layer and how its features become classes.

    Written on the command line as ``PATH[|layername=NAME][|class=CLASS][|field=FIELD]``.
    """

    path: str
    layer: str | None = None
    fixed_class: str | None = None
    class_field: str | None = None

    @classmethod
    def parse(cls, text: str) -> "MapLayerSpec":
        parts = text.split("|")
        spec = cls(path=parts[0])
        for part in parts[1:]:
            key, _, value = part.partition("=")
            if key == "layername":
                spec.layer = value
            elif key == "class":
                if value not in CLASS_IDS:
                    raise UsageError(f"unknown class {value!r} in {text!r}; classes: {', '.join(CLASS_IDS)}")
                spec.fixed_class = value
            elif key == "field":
                spec.class_field = value
            else:
                raise UsageError(f"unknown map option {key!r} in {text!r} (use layername=, class= or field=)")
        return spec

    def describe(self) -> str:
        text = self.path + (f"|layername={self.layer}" if self.layer else "")
        if self.fixed_class:
            text += f"|class={self.fixed_class}"
        if self.class_field:
            text += f"|field={self.class_field}"
        return text


def classify_value(value: object) -> str | None:
    """A class name for an attribute value: schema name, class id, or OSM tag value."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in CLASS_IDS:
        return text
    if text.isdigit() and int(text) in CLASS_SCHEMA:
        return CLASS_SCHEMA[int(text)]
    return OSM_VALUE_CLASSES.get(text)


def classify_osm(feature: ogr.Feature, fields: list[str]) -> tuple[str | None, str | None]:
    """(class, highway value) from OpenStreetMap-style tag fields of a feature."""
    for name in fields:
        value = feature.GetField(name)
        if value in (None, "", "no"):
            continue
        by_value = classify_value(value)
        if name == "fclass" and by_value:
            return by_value, str(value).lower()
        if name in OSM_KEY_CLASSES:
            return OSM_KEY_CLASSES[name], str(value).lower()
        if by_value:
            return by_value, str(value).lower()
    return None, None


def srs_from_wkt(wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference(wkt=wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


@contextmanager
def opened_layer(spec: MapLayerSpec) -> Iterator[ogr.Layer]:
    """The spec's layer, released before its data source on the way out, as GDAL requires."""
    source, layer = _open_layer(spec)
    try:
        yield layer
    finally:
        del layer
        del source


def _open_layer(spec: MapLayerSpec) -> tuple[ogr.DataSource, ogr.Layer]:
    if not Path(spec.path).exists():
        raise InputError(f"map layer not found: {spec.path}")
    try:
        source = ogr.Open(spec.path)
    except RuntimeError as exc:
        raise InputError(f"cannot read map layer {spec.path}: {str(exc).strip()}") from exc
    if source is None or source.GetLayerCount() == 0:
        raise InputError(f"not a vector data set: {spec.path}")
    layer = source.GetLayerByName(spec.layer) if spec.layer else source.GetLayer(0)
    if layer is None:
        names = [source.GetLayer(i).GetName() for i in range(source.GetLayerCount())]
        raise InputError(f"no layer {spec.layer!r} in {spec.path}; layers: {', '.join(names)}")
    return source, layer


def feature_count(spec: MapLayerSpec) -> int:
    """How many features a map layer holds, with the same errors as reading it for a map."""
    with opened_layer(spec) as layer:
        return layer.GetFeatureCount()


# How far a line's buffer reaches beyond the line: a region's read is widened by it, so a
# road just outside the region still burns its width inside.
MAX_HALF_WIDTH_M = max(*ROAD_WIDTHS_M.values(), DEFAULT_ROAD_WIDTH_M, WATERWAY_WIDTH_M) / 2
Bounds = tuple[float, float, float, float]  # (xmin, ymin, xmax, ymax) in the raster's CRS


VALIDITY_HELD = 4096  # features whose validity a LayerReader remembers (a bounded cache)


class LayerReader:
    """One map layer, checked once at opening, then read one region at a time.

    Only the features that reach a region are reprojected, classified, buffered and clipped to
    it (OGR's spatial filter: the layer's own index where it has one), so memory follows the
    region and not the layer: a country-wide layer under a small raster costs what lies under
    the raster. The layer is opened for each read and closed at once, so no GDAL handle
    outlives a read (a segfault at a late garbage collection inside QGIS otherwise).
    """

    def __init__(self, spec: MapLayerSpec, crs_wkt: str, metres_per_unit: float) -> None:
        self.spec = spec
        self.crs_wkt = crs_wkt
        self.unit = metres_per_unit
        self._validity: OrderedDict[int, bool] = OrderedDict()
        with opened_layer(spec) as layer:
            self.lower = self._check(layer)

    def _is_valid(self, fid: int, shape: BaseGeometry) -> bool:
        """GEOS validity, remembered for the last ``VALIDITY_HELD`` features: a feature that
        spans several bands is read once per band, and the check is the costliest step of a
        read (make bench's scene: 0.21 s of an encode, 0.09 s of it on repeats)."""
        if fid < 0:  # a driver without feature ids
            return shape.is_valid
        if fid in self._validity:
            self._validity.move_to_end(fid)
            return self._validity[fid]
        valid = self._validity[fid] = shape.is_valid
        if len(self._validity) > VALIDITY_HELD:
            self._validity.popitem(last=False)
        return valid

    def _check(self, layer: ogr.Layer) -> dict[str, str]:
        """The layer's problems as clear errors; returns its field names by lower-case name."""
        spec = self.spec
        if layer.GetFeatureCount() == 0:
            raise InputError(f"map layer {spec.describe()} is empty")
        layer_srs = layer.GetSpatialRef()
        if layer_srs is None or (layer_srs.GetName() or "").startswith("Undefined"):  # GeoPackage srs_id 0 / -1
            raise InputError(f"map layer {spec.describe()} has no CRS; assign one (e.g. in QGIS) and try again")
        if not self.crs_wkt:
            raise InputError("the raster has no CRS, so a vector map cannot be placed on it")
        fields = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
        lower = {f.lower(): f for f in fields}
        if spec.class_field and spec.class_field not in fields:
            raise InputError(f"map layer {spec.describe()} has no field {spec.class_field!r}; fields: {', '.join(fields)}")
        if not spec.fixed_class and not spec.class_field and "class" not in lower and not any(t in lower for t in OSM_TAG_FIELDS):
            raise InputError(
                f"cannot tell the classes of {spec.describe()}: give |class=NAME or |field=FIELD "
                f"(fields: {', '.join(fields) or 'none'})"
            )
        return lower

    def read(self, bounds: Bounds) -> list[tuple[int, BaseGeometry]]:
        """(class id, geometry clipped to ``bounds``) of every feature that reaches ``bounds``."""
        with opened_layer(self.spec) as layer:
            return self._read(layer, bounds)

    def _read(self, layer: ogr.Layer, bounds: Bounds) -> list[tuple[int, BaseGeometry]]:
        layer_srs = layer.GetSpatialRef()
        layer_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        raster_srs = srs_from_wkt(self.crs_wkt)
        self._filter(layer, osr.CoordinateTransformation(raster_srs, layer_srs), bounds)
        transform = osr.CoordinateTransformation(layer_srs, raster_srs)
        out: list[tuple[int, BaseGeometry]] = []
        layer.ResetReading()
        for feature in layer:
            geometry = feature.GetGeometryRef()
            if geometry is None or geometry.IsEmpty():
                continue
            name, subtype = self._feature_class(self.spec, feature, self.lower)
            if name is None or name == "background":
                continue
            geometry = geometry.Clone()
            try:
                geometry.Transform(transform)
            except RuntimeError:
                continue  # outside the projection's domain: cannot lie on this raster
            shape = shapely_wkb.loads(bytes(geometry.ExportToWkb()))
            if shape.geom_type in ("Polygon", "MultiPolygon") and not self._is_valid(feature.GetFID(), shape):
                shape = shape.buffer(0)
            shape = self._areal(shape, name, subtype, self.unit)
            if shape is None or shape.is_empty:
                continue
            shape = shapely.clip_by_rect(shape, *bounds)
            if not shape.is_empty:
                out.append((CLASS_IDS[name], shape))
        return out

    def _filter(self, layer: ogr.Layer, to_layer: osr.CoordinateTransformation, bounds: Bounds) -> None:
        """Restrict the read to the region, widened by the widest line buffer, in the layer's CRS
        (the outline densified first, so a curving reprojection still encloses the region)."""
        grow = MAX_HALF_WIDTH_M / self.unit
        x0, y0, x1, y1 = bounds[0] - grow, bounds[1] - grow, bounds[2] + grow, bounds[3] + grow
        outline = ogr.CreateGeometryFromWkt(f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))")
        outline.Segmentize(max(x1 - x0, y1 - y0) / 32)
        try:
            outline.Transform(to_layer)
        except RuntimeError:
            return  # the region has no outline in the layer's CRS: read every feature
        xmin, xmax, ymin, ymax = outline.GetEnvelope()
        layer.SetSpatialFilterRect(xmin, ymin, xmax, ymax)

    @staticmethod
    def _feature_class(spec: MapLayerSpec, feature: ogr.Feature, lower: dict[str, str]) -> tuple[str | None, str | None]:
        if spec.fixed_class:
            highway = feature.GetField(lower["highway"]) if "highway" in lower else None
            return spec.fixed_class, (str(highway).lower() if highway else None)
        if spec.class_field:
            value = feature.GetField(spec.class_field)
            return classify_value(value), (str(value).lower() if value is not None else None)
        if "class" in lower:
            value = feature.GetField(lower["class"])
            return classify_value(value), None
        return classify_osm(feature, [lower[t] for t in OSM_TAG_FIELDS if t in lower])

    @staticmethod
    def _areal(shape: BaseGeometry, name: str, subtype: str | None, metres_per_unit: float) -> BaseGeometry | None:
        """Polygons (made valid by the caller) stay; lines and points get a width (roads by
        type, waterways fixed)."""
        if shape.geom_type in ("Polygon", "MultiPolygon"):
            return shape
        if shape.geom_type in ("GeometryCollection",):
            polys = [g for g in shape.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
            return polys[0] if len(polys) == 1 else None
        if name == "road":
            width = ROAD_WIDTHS_M.get(subtype or "", DEFAULT_ROAD_WIDTH_M)
        elif name == "water":
            width = WATERWAY_WIDTH_M
        else:
            width = 4.0
        return shape.buffer(width / 2 / metres_per_unit, cap_style="flat" if "Line" in shape.geom_type else "round")
