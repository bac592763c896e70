"""Maps: the user's vector layers (or a rendered map raster) on the raster's pixel grid.

The map is known at both ends, so it costs no bits; the file stores a fingerprint of the
map as rasterised here, and decoding with a different map is refused.

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

import hashlib
from dataclasses import dataclass
from collections import OrderedDict
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr
import shapely
from shapely import wkb as shapely_wkb
from shapely.geometry.base import BaseGeometry

from .errors import InputError, UsageError

gdal.UseExceptions()
ogr.UseExceptions()
osr.UseExceptions()

CLASS_SCHEMA: dict[int, str] = {0: "background", 1: "building", 2: "road", 3: "water", 4: "vegetation"}
CLASS_IDS: dict[str, int] = {name: cid for cid, name in CLASS_SCHEMA.items()}
BURN_ORDER = ["vegetation", "water", "road", "building"]

# Rendered colours (the MapTiler-like palette of the official MAGC data) for RGB-map presets.
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (242, 239, 233),
    1: (226, 224, 210),
    2: (254, 254, 254),
    3: (133, 203, 249),
    4: (217, 233, 198),
}

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

BLOCK = 256  # maps are rasterised in fixed global blocks so every window sees the same pixels
# A block burns only the geometries that reach it, clipped to it plus a margin (so no pixel
# centre inside moves): rasterising costs the features near a block, not the whole map's.
CLIP_MARGIN_PX = 2


class BlockCache:
    """A small LRU of map blocks, keyed by block position.

    Deliberately holds no reference to its owner (no reference cycle), so GDAL objects are
    freed as soon as their owner goes, never by a late garbage collection after GDAL or
    QGIS has shut down (a segfault otherwise).
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.blocks: OrderedDict = OrderedDict()

    def get(self, key: tuple[int, int], make) -> np.ndarray:
        if key in self.blocks:
            self.blocks.move_to_end(key)
            return self.blocks[key]
        block = self.blocks[key] = make(*key)
        if len(self.blocks) > self.size:
            self.blocks.popitem(last=False)
        return block


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


@dataclass
class Grid:
    """A raster's pixel grid: size, geotransform and CRS (WKT, may be empty)."""

    width: int
    height: int
    geotransform: tuple[float, ...]
    crs_wkt: str

    def window_geotransform(self, x0: int, y0: int) -> tuple[float, ...]:
        g = self.geotransform
        x, y = self.pixel_to_geo(x0, y0)
        return (x, g[1], g[2], y, g[4], g[5])

    def pixel_to_geo(self, px: float, py: float) -> tuple[float, float]:
        g = self.geotransform
        return g[0] + px * g[1] + py * g[2], g[3] + px * g[4] + py * g[5]

    def metres_per_unit(self) -> float:
        if not self.crs_wkt:
            return 1.0
        srs = osr.SpatialReference(wkt=self.crs_wkt)
        if srs.IsGeographic():
            g = self.geotransform
            lat = g[3] + g[5] * self.height / 2
            return 111_320.0 * max(np.cos(np.radians(lat)), 1e-6)
        return srs.GetLinearUnits() or 1.0


def _srs(wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference(wkt=wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


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
    source, layer = _open_layer(spec)
    count = layer.GetFeatureCount()
    del layer, source  # the layer before its data source, as GDAL requires
    return count


class VectorMap:
    """Vector layers reprojected, classified and buffered once, rasterised per block on demand.

    The geometries stay in a spatial index; each block burns an OGR memory layer of only the
    geometries that reach it, clipped to it, so that a map of any size is rasterised in time
    proportional to its area. (Burning every feature into every block made the map take most
    of an encode: 20 s for a 5000 px map where clipping takes 1.3 s, and GDAL's polygon
    filling costs edges x scanlines, so even a 2048 px bucket was 15 x slower than a block.)
    """

    kind = "classes"

    def __init__(self, specs: list[MapLayerSpec], grid: Grid) -> None:
        self.grid = grid
        self.specs = specs
        self.feature_counts: dict[str, int] = {}
        geometries = [item for spec in specs for item in self._load(spec)]
        geometries.sort(key=lambda item: BURN_ORDER.index(CLASS_SCHEMA[item[0]]))  # later burns win
        self._classes = [class_id for class_id, _ in geometries]
        self._shapes = [shape for _, shape in geometries]
        self._tree = shapely.STRtree(self._shapes)
        self._srs = _srs(grid.crs_wkt) if grid.crs_wkt else None
        self._cache = BlockCache()

    def _clipped(self, by: int, bx: int) -> ogr.DataSource:
        """A memory data source of the geometries clipped to one block (plus the margin). Its
        layer is fetched and released by the caller, so no layer object can outlive it (a GDAL
        segfault at garbage collection otherwise)."""
        size, margin = BLOCK, CLIP_MARGIN_PX
        corners = [(bx * size + dx, by * size + dy) for dx in (-margin, size + margin) for dy in (-margin, size + margin)]
        xs, ys = zip(*(self.grid.pixel_to_geo(px, py) for px, py in corners))
        bounds = (min(xs), min(ys), max(xs), max(ys))
        source = ogr.GetDriverByName("Memory").CreateDataSource("magc_map")
        layer = source.CreateLayer("classes", srs=self._srs, geom_type=ogr.wkbMultiPolygon)
        layer.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger))
        for index in sorted(self._tree.query(shapely.box(*bounds))):  # sorted: the burn order
            part = shapely.clip_by_rect(self._shapes[index], *bounds)
            if part.is_empty:
                continue
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetField("cls", self._classes[index])
            # 2-D WKB explicitly: inside QGIS, shapely may run on QGIS's older GEOS, which
            # refuses the 4-D output shapely 2.2 asks for by default
            feature.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(part, output_dimension=2)))
            layer.CreateFeature(feature)
        del layer
        return source

    def _load(self, spec: MapLayerSpec) -> list[tuple[int, BaseGeometry]]:
        source, layer = _open_layer(spec)
        try:
            return self._load_features(spec, layer)
        finally:
            del layer  # before its data source
            del source

    def _load_features(self, spec: MapLayerSpec, layer: ogr.Layer) -> list[tuple[int, BaseGeometry]]:
        if layer.GetFeatureCount() == 0:
            raise InputError(f"map layer {spec.describe()} is empty")
        layer_srs = layer.GetSpatialRef()
        if layer_srs is None or (layer_srs.GetName() or "").startswith("Undefined"):  # GeoPackage srs_id 0 / -1
            raise InputError(f"map layer {spec.describe()} has no CRS; assign one (e.g. in QGIS) and try again")
        if not self.grid.crs_wkt:
            raise InputError("the raster has no CRS, so a vector map cannot be placed on it")
        layer_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        transform = osr.CoordinateTransformation(layer_srs, _srs(self.grid.crs_wkt))
        fields = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
        lower = {f.lower(): f for f in fields}
        if spec.class_field and spec.class_field not in fields:
            raise InputError(f"map layer {spec.describe()} has no field {spec.class_field!r}; fields: {', '.join(fields)}")
        if not spec.fixed_class and not spec.class_field and "class" not in lower and not any(t in lower for t in OSM_TAG_FIELDS):
            raise InputError(
                f"cannot tell the classes of {spec.describe()}: give |class=NAME or |field=FIELD "
                f"(fields: {', '.join(fields) or 'none'})"
            )
        unit = self.grid.metres_per_unit()
        out: list[tuple[int, BaseGeometry]] = []
        layer.ResetReading()
        for feature in layer:
            geometry = feature.GetGeometryRef()
            if geometry is None or geometry.IsEmpty():
                continue
            name, subtype = self._feature_class(spec, feature, lower)
            if name is None or name == "background":
                continue
            geometry = geometry.Clone()
            try:
                geometry.Transform(transform)
            except RuntimeError:
                continue  # outside the projection's domain: cannot lie on this raster
            shape = shapely_wkb.loads(bytes(geometry.ExportToWkb()))
            shape = self._areal(shape, name, subtype, unit)
            if shape is not None and not shape.is_empty:
                out.append((CLASS_IDS[name], shape))
        self.feature_counts[spec.describe()] = len(out)
        return out

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
        """Polygons stay; lines and points get a width (roads by type, waterways fixed)."""
        if shape.geom_type in ("Polygon", "MultiPolygon"):
            return shape.buffer(0) if not shape.is_valid else shape
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

    def _block(self, by: int, bx: int) -> np.ndarray:
        return self._cache.get((by, bx), self._rasterise_block)

    def _rasterise_block(self, by: int, bx: int) -> np.ndarray:
        x0, y0 = bx * BLOCK, by * BLOCK
        target = gdal.GetDriverByName("MEM").Create("", BLOCK, BLOCK, 1, gdal.GDT_Byte)
        target.SetGeoTransform(self.grid.window_geotransform(x0, y0))
        if self.grid.crs_wkt:
            target.SetProjection(self.grid.crs_wkt)
        clipped = self._clipped(by, bx)
        layer = clipped.GetLayer(0)
        gdal.RasterizeLayer(target, [1], layer, options=["ATTRIBUTE=cls"])
        del layer, clipped
        return target.GetRasterBand(1).ReadAsArray()

    def read(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """Class ids (height, width) of a window inside the raster."""
        return assemble_blocks(self._block, x0, y0, width, height, (), np.uint8)

    def fingerprint(self) -> bytes:
        return fingerprint_blocks(self._block, self.grid, ())


class EmptyMap:
    """No map layers: every pixel is background (works, but the map guides nothing)."""

    kind = "classes"

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.specs: list[MapLayerSpec] = []
        self.feature_counts: dict[str, int] = {}

    def read(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        return np.zeros((height, width), np.uint8)

    def fingerprint(self) -> bytes:
        return fingerprint_blocks(lambda by, bx: np.zeros((BLOCK, BLOCK), np.uint8), self.grid, ())


class RasterMap:
    """A rendered map raster (RGB), warped onto the raster's grid: for RGB-map presets."""

    kind = "rgb"

    def __init__(self, path: str, grid: Grid) -> None:
        if not Path(path).exists():
            raise InputError(f"map raster not found: {path}")
        try:
            source = gdal.Open(path)
        except RuntimeError as exc:
            raise InputError(f"cannot read map raster {path}: {str(exc).strip()}") from exc
        if source.RasterCount < 3:
            raise InputError(f"map raster {path} needs 3 bands (RGB), it has {source.RasterCount}")
        if not source.GetProjection() or not grid.crs_wkt:
            raise InputError(f"cannot place map raster {path}: it or the image has no CRS")
        self.grid = grid
        self.specs = [MapLayerSpec(path=path)]
        self.feature_counts = {}
        g = grid.geotransform
        bounds = (g[0], g[3] + g[5] * grid.height, g[0] + g[1] * grid.width, g[3])
        self._source = source  # the warped VRT reads it: it must live as long
        self._warped = gdal.Warp(
            "", source, format="VRT", outputBounds=bounds, width=grid.width, height=grid.height,
            dstSRS=grid.crs_wkt, resampleAlg="near", outputType=gdal.GDT_Byte, dstNodata=None,
        )
        self._cache = BlockCache(32)

    def _block(self, by: int, bx: int) -> np.ndarray:
        return self._cache.get((by, bx), self._read_block)

    def _read_block(self, by: int, bx: int) -> np.ndarray:
        x0, y0 = bx * BLOCK, by * BLOCK
        w, h = min(BLOCK, self.grid.width - x0), min(BLOCK, self.grid.height - y0)
        block = np.full((3, BLOCK, BLOCK), 255, np.uint8)
        data = self._warped.ReadAsArray(x0, y0, w, h, band_list=[1, 2, 3])
        block[:, :h, :w] = data
        return block

    def read(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        return assemble_blocks(self._block, x0, y0, width, height, (3,), np.uint8)

    def fingerprint(self) -> bytes:
        return fingerprint_blocks(self._block, self.grid, (3,))


def render_classes(class_map: np.ndarray) -> np.ndarray:
    """(3, H, W) RGB rendering of a class map in the official map palette."""
    palette = np.zeros((256, 3), np.uint8)
    for cid, colour in CLASS_COLOURS.items():
        palette[cid] = colour
    return palette[class_map].transpose(2, 0, 1)


class RenderedVectorMap:
    """Vector layers rendered in the official palette: lets RGB-map presets use vector layers."""

    kind = "rgb"

    def __init__(self, vector_map: VectorMap | EmptyMap) -> None:
        self.inner = vector_map
        self.grid = vector_map.grid
        self.specs = vector_map.specs
        self.feature_counts = vector_map.feature_counts

    def read(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        return render_classes(self.inner.read(x0, y0, width, height))

    def fingerprint(self) -> bytes:
        return self.inner.fingerprint()


def assemble_blocks(block_fn, x0: int, y0: int, width: int, height: int, lead: tuple, dtype) -> np.ndarray:
    """A window (inside the raster) cut from fixed global blocks, so that every window that
    covers a pixel sees the same value whatever its own origin."""
    out = np.zeros(lead + (height, width), dtype)
    for by in range(y0 // BLOCK, (y0 + height - 1) // BLOCK + 1):
        for bx in range(x0 // BLOCK, (x0 + width - 1) // BLOCK + 1):
            block = block_fn(by, bx)
            ys, xs = by * BLOCK, bx * BLOCK
            t0, l0 = max(ys, y0), max(xs, x0)
            t1, l1 = min(ys + BLOCK, y0 + height), min(xs + BLOCK, x0 + width)
            out[..., t0 - y0:t1 - y0, l0 - x0:l1 - x0] = block[..., t0 - ys:t1 - ys, l0 - xs:l1 - xs]
    return out


def fingerprint_blocks(block_fn, grid: Grid, lead: tuple) -> bytes:
    """BLAKE2b-64 of the map over the raster, block by block in raster order."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{grid.width}x{grid.height}".encode())
    for by in range((grid.height + BLOCK - 1) // BLOCK):
        for bx in range((grid.width + BLOCK - 1) // BLOCK):
            block = block_fn(by, bx)
            h, w = min(BLOCK, grid.height - by * BLOCK), min(BLOCK, grid.width - bx * BLOCK)
            digest.update(np.ascontiguousarray(block[..., :h, :w]).tobytes())
    return digest.digest()


def open_map(paths: list[str], grid: Grid, kind: str):
    """The map source for a preset's map kind: class map (vectors), RGB map (raster or
    rendering), or none (a method without maps ignores any layers given)."""
    if kind == "none":
        return EmptyMap(grid)
    if kind == "rgb" and len(paths) == 1 and _is_raster(paths[0]):
        return RasterMap(paths[0], grid)
    specs = [MapLayerSpec.parse(p) for p in paths]
    base = VectorMap(specs, grid) if specs else EmptyMap(grid)
    return RenderedVectorMap(base) if kind == "rgb" else base


def _is_raster(path: str) -> bool:
    if "|" in path or not Path(path).exists():
        return False
    try:
        source = gdal.OpenEx(path, gdal.OF_RASTER)
    except RuntimeError:
        return False
    return source is not None and source.RasterCount > 0
