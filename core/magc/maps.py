"""Maps: the user's vector layers (or a rendered map raster) on the raster's pixel grid.

The map is known at both ends, so it costs no bits; the file stores a fingerprint of the
map as rasterised here, and decoding with a different map is refused. How layers become
classes (the class schema, OpenStreetMap tags, line widths) is ``map_layers``; this module
puts them on the pixel grid, in fixed global blocks so that every window sees the same pixels.
"""
from __future__ import annotations

import hashlib
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal, ogr, osr
import shapely

from .errors import InputError
from .map_layers import BURN_ORDER, CLASS_SCHEMA, LayerReader, MapLayerSpec, srs_from_wkt

gdal.UseExceptions()
ogr.UseExceptions()
osr.UseExceptions()

# Rendered colours (the MapTiler-like palette of the official MAGC data) for RGB-map presets.
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (242, 239, 233),
    1: (226, 224, 210),
    2: (254, 254, 254),
    3: (133, 203, 249),
    4: (217, 233, 198),
}

BLOCK = 256  # maps are rasterised in fixed global blocks so every window sees the same pixels
# A block burns only the geometries that reach it, clipped to it plus a margin (so no pixel
# centre inside moves): rasterising costs the features near a block, not the whole map's.
CLIP_MARGIN_PX = 2


class BandCache:
    """A small LRU of bands of features, keyed by their position.

    Deliberately holds no reference to its owner (no reference cycle), so GDAL objects are
    freed as soon as their owner goes, never by a late garbage collection after GDAL or
    QGIS has shut down (a segfault otherwise).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.bands: OrderedDict = OrderedDict()

    def get(self, key: tuple[int, ...], make) -> Any:
        if key in self.bands:
            self.bands.move_to_end(key)
            return self.bands[key]
        band = self.bands[key] = make(*key)
        if len(self.bands) > self.size:
            self.bands.popitem(last=False)
        return band


class PackedBlocks:
    """Map blocks kept zlib-packed within a byte budget, the least recently used dropped first.

    Encoding and decoding fingerprint the whole map before the first tile, and the tiles then
    need the same blocks again: held packed (a 64 KB land-cover block packs to about 3 KB, so
    a 100 Mpx map fits in about 5 MB), each block is rasterised once instead of twice. Past
    the budget, blocks are made again on demand, so memory stays bounded on any raster.
    """

    def __init__(self, budget_bytes: int = 16 << 20) -> None:
        self.budget_bytes = budget_bytes
        self.held_bytes = 0
        self.blocks: OrderedDict[tuple[int, ...], tuple[bytes, np.dtype, tuple[int, ...]]] = OrderedDict()

    def get(self, key: tuple[int, ...], make) -> np.ndarray:
        if key in self.blocks:
            self.blocks.move_to_end(key)
            packed, dtype, shape = self.blocks[key]
            return np.frombuffer(zlib.decompress(packed), dtype).reshape(shape)
        block = make(*key)
        packed = zlib.compress(np.ascontiguousarray(block).tobytes(), 1)
        self.blocks[key] = (packed, block.dtype, block.shape)
        self.held_bytes += len(packed)
        while self.held_bytes > self.budget_bytes and self.blocks:
            self.held_bytes -= len(self.blocks.popitem(last=False)[1][0])
        return block


# Features are read from the layers in bands of block rows; a tile row (1024 px + halo) spans
# two or three bands, so three are held.
BAND_BLOCKS = 4
BANDS_HELD = 3
BAND_MARGIN_PX = 2 * CLIP_MARGIN_PX


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

    def geo_bounds(self, px0: float, py0: float, px1: float, py1: float) -> tuple[float, float, float, float]:
        """The geographic box around a pixel rectangle (any geotransform, rotated too)."""
        xs, ys = zip(*(self.pixel_to_geo(px, py) for px in (px0, px1) for py in (py0, py1)))
        return min(xs), min(ys), max(xs), max(ys)

    def metres_per_unit(self) -> float:
        if not self.crs_wkt:
            return 1.0
        srs = osr.SpatialReference(wkt=self.crs_wkt)
        if srs.IsGeographic():
            g = self.geotransform
            lat = g[3] + g[5] * self.height / 2
            return 111_320.0 * max(np.cos(np.radians(lat)), 1e-6)
        return srs.GetLinearUnits() or 1.0



class VectorMap:
    """Vector layers rasterised per block on demand, read from the layers one band at a time.

    A band is ``BAND_BLOCKS`` block rows across the raster: its features are read, classified,
    buffered and clipped to it (``LayerReader``), and kept in a spatial index while its blocks
    are rasterised. Encoding and decoding go down the raster row by row, so a few bands are
    held at once and memory does not grow with the raster's height or the layer's size (holding
    every feature cost 96 MB at 10 000 x 10 000 px, make bench's mirrored map). Each block burns
    an OGR memory layer of only the geometries that reach it, clipped to it: rasterising every
    feature into every block made the map take most of an encode (20 s for a 5000 px map where
    clipping takes 1.3 s).
    """

    kind = "classes"

    def __init__(self, specs: list[MapLayerSpec], grid: Grid) -> None:
        self.grid = grid
        self.specs = specs
        unit = grid.metres_per_unit()
        self._layers = [LayerReader(spec, grid.crs_wkt, unit) for spec in specs]
        self._srs = srs_from_wkt(grid.crs_wkt) if grid.crs_wkt else None
        self._bands = BandCache(BANDS_HELD)
        self._cache = PackedBlocks()

    def _band(self, band: int) -> tuple[list[int], list, shapely.STRtree]:
        return self._bands.get((band,), self._load_band)

    def _load_band(self, band: int) -> tuple[list[int], list, shapely.STRtree]:
        """(class ids, geometries in burn order, their index) of one band, clipped to it plus a
        margin wider than a block's, so that clipping to a block cuts the original edges."""
        margin, width = BAND_MARGIN_PX, -(-self.grid.width // BLOCK) * BLOCK
        top = band * BAND_BLOCKS * BLOCK
        bounds = self.grid.geo_bounds(-margin, top - margin, width + margin, top + BAND_BLOCKS * BLOCK + margin)
        geometries = [item for layer in self._layers for item in layer.read(bounds)]
        geometries.sort(key=lambda item: BURN_ORDER.index(CLASS_SCHEMA[item[0]]))  # later burns win
        shapes = [shape for _, shape in geometries]
        return [class_id for class_id, _ in geometries], shapes, shapely.STRtree(shapes)

    def _clipped(self, by: int, bx: int) -> ogr.DataSource:
        """A memory data source of the geometries clipped to one block (plus the margin). Its
        layer is fetched and released by the caller, so no layer object can outlive it (a GDAL
        segfault at garbage collection otherwise)."""
        size, margin = BLOCK, CLIP_MARGIN_PX
        bounds = self.grid.geo_bounds(bx * size - margin, by * size - margin, (bx + 1) * size + margin, (by + 1) * size + margin)
        classes, shapes, tree = self._band(by // BAND_BLOCKS)
        source = ogr.GetDriverByName("Memory").CreateDataSource("magc_map")
        layer = source.CreateLayer("classes", srs=self._srs, geom_type=ogr.wkbMultiPolygon)
        layer.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger))
        for index in sorted(tree.query(shapely.box(*bounds))):  # sorted: the burn order
            part = shapely.clip_by_rect(shapes[index], *bounds)
            if part.is_empty:
                continue
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetField("cls", classes[index])
            # 2-D WKB explicitly: inside QGIS, shapely may run on QGIS's older GEOS, which
            # refuses the 4-D output shapely 2.2 asks for by default
            feature.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(part, output_dimension=2)))
            layer.CreateFeature(feature)
        del layer
        return source

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
        g = grid.geotransform
        bounds = (g[0], g[3] + g[5] * grid.height, g[0] + g[1] * grid.width, g[3])
        self._source = source  # the warped VRT reads it: it must live as long
        self._warped = gdal.Warp(
            "", source, format="VRT", outputBounds=bounds, width=grid.width, height=grid.height,
            dstSRS=grid.crs_wkt, resampleAlg="near", outputType=gdal.GDT_Byte, dstNodata=None,
        )
        self._cache = PackedBlocks()

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
