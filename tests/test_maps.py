"""Vector layers -> class maps on the raster grid: reprojection, classes, widths, fingerprints."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from magc.errors import InputError, UsageError
from magc.map_layers import BURN_ORDER, CLASS_IDS, CLASS_SCHEMA, MapLayerSpec, classify_value
from magc.maps import BAND_BLOCKS, BLOCK, Grid, PackedBlocks, RasterMap, VectorMap, open_map, render_classes
from magc.raster import RasterReader
from magc.tiling import TileGrid


def grid_of(path: Path) -> Grid:
    info = RasterReader(path, compute_ranges=False).info
    return Grid(info.width, info.height, info.geotransform, info.crs_wkt)


def line_layer(path: Path, epsg: int, rows: list[tuple[str, str]]) -> Path:
    """A GeoPackage of lines with a ``highway`` field, given as (WKT, highway)."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = source.CreateLayer("roads", srs=srs, geom_type=ogr.wkbLineString)
    layer.CreateField(ogr.FieldDefn("highway", ogr.OFTString))
    for wkt, highway in rows:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("highway", highway)
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        layer.CreateFeature(feature)
    feature = layer = source = None
    return path


def test_spec_parsing() -> None:
    spec = MapLayerSpec.parse("osm.gpkg|layername=lines|field=highway")
    assert (spec.path, spec.layer, spec.class_field, spec.fixed_class) == ("osm.gpkg", "lines", "highway", None)
    assert MapLayerSpec.parse("b.shp|class=building").fixed_class == "building"
    with pytest.raises(UsageError):
        MapLayerSpec.parse("b.shp|class=castle")
    with pytest.raises(UsageError):
        MapLayerSpec.parse("b.shp|colour=red")


@pytest.mark.parametrize("value,expected", [("building", "building"), ("2", "road"), ("primary", "road"), ("forest", "vegetation"),
                                            ("reservoir", "water"), ("Residential", "road"), ("spaceport", None)])
def test_osm_and_schema_values(value: str, expected: str | None) -> None:
    assert classify_value(value) == expected


def test_buildings_rasterise_the_same_from_another_crs(fixtures_dir: Path, tmp_path: Path) -> None:
    raster = fixtures_dir / "sample_geotiff.tif"
    grid = grid_of(raster)
    native = VectorMap([MapLayerSpec(str(fixtures_dir / "geotiff_labels.geojson"), fixed_class="building")], grid)
    wgs84 = tmp_path / "b4326.gpkg"
    gdal.VectorTranslate(str(wgs84), str(fixtures_dir / "geotiff_labels.geojson"), dstSRS="EPSG:4326", format="GPKG")
    reprojected = VectorMap([MapLayerSpec(str(wgs84), fixed_class="building")], grid)
    a, b = native.read(0, 0, grid.width, grid.height), reprojected.read(0, 0, grid.width, grid.height)
    buildings_a, buildings_b = a == CLASS_IDS["building"], b == CLASS_IDS["building"]
    assert buildings_a.mean() > 0.02  # the 43 footprints cover a real share of the chip
    iou = (buildings_a & buildings_b).sum() / (buildings_a | buildings_b).sum()
    assert iou > 0.97


def test_windows_agree_with_the_whole_map(fixtures_dir: Path) -> None:
    grid = grid_of(fixtures_dir / "sample_geotiff.tif")
    vmap = VectorMap([MapLayerSpec(str(fixtures_dir / "geotiff_labels.geojson"), fixed_class="building")], grid)
    whole = vmap.read(0, 0, grid.width, grid.height)
    assert np.array_equal(vmap.read(300, 170, 333, 411), whole[170:581, 300:633])



def test_fingerprint_and_tiles_rasterise_each_block_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Encode and decode fingerprint the whole map, then read it again tile by tile: the
    second pass must reuse the packed blocks, neither rasterising nor reading the layers again
    (on a raster of more blocks and bands than any count-limited cache would hold)."""
    width, height = 11 * BLOCK, 4 * BAND_BLOCKS * BLOCK
    grid = Grid(width, height, (500000.0, 1.0, 0.0, 2800000.0 + height, 0.0, -1.0), _wkt(32640))
    rows = list(range(100, height, 200))
    roads = [(f"LINESTRING (500000 {2800000 + height - y}, {500000 + width} {2800000 + height - y})", "residential") for y in rows]
    vmap = VectorMap([MapLayerSpec(str(line_layer(tmp_path / "roads.gpkg", 32640, roads)))], grid)
    made: list[tuple[int, int]] = []
    bands: list[tuple[int]] = []
    rasterise, load_band = vmap._rasterise_block, vmap._load_band
    monkeypatch.setattr(vmap, "_rasterise_block", lambda by, bx: made.append((by, bx)) or rasterise(by, bx))
    monkeypatch.setattr(vmap, "_load_band", lambda band: bands.append(band) or load_band(band))
    vmap.fingerprint()
    assert len(made) == len(set(made)) == 11 * 4 * BAND_BLOCKS and len(bands) == 4
    tiles = TileGrid(width, height, 1024, 64, 64)
    for r, c in tiles.tiles():
        window = tiles.context(r, c)
        x0, y0 = max(window.x0, 0), max(window.y0, 0)
        part = vmap.read(x0, y0, min(window.x0 + window.width, width) - x0, min(window.y0 + window.height, height) - y0)
        assert (part == CLASS_IDS["road"]).any()
    assert len(made) == 11 * 4 * BAND_BLOCKS and len(bands) == 4
    road = vmap.read(0, 0, width, height) == CLASS_IDS["road"]
    assert road.sum() == len(rows) * 8 * width


def test_packed_blocks_keep_what_fits_their_budget() -> None:
    rng = np.random.default_rng(0)
    blocks = {(by, bx): (rng.random((BLOCK, BLOCK)) < 0.01).astype(np.uint8) * 3 for by in range(4) for bx in range(4)}
    made: list[tuple[int, int]] = []

    def make(by: int, bx: int) -> np.ndarray:
        made.append((by, bx))
        return blocks[by, bx]

    roomy = PackedBlocks()
    for _ in range(2):
        for key, block in blocks.items():
            assert np.array_equal(roomy.get(key, make), block)
    assert len(made) == len(blocks)  # all made once, then unpacked
    assert 0 < roomy.held_bytes < sum(b.nbytes for b in blocks.values()) / 4

    made.clear()
    one_block = len(roomy.blocks[0, 0][0])
    tight = PackedBlocks(budget_bytes=3 * one_block)
    for key, block in blocks.items():
        assert np.array_equal(tight.get(key, make), block)
    assert tight.held_bytes <= 3 * one_block and len(tight.blocks) < len(blocks)
    assert np.array_equal(tight.get((0, 0), make), blocks[0, 0]) and made.count((0, 0)) == 2  # dropped, made again


def test_roads_get_their_width(tmp_path: Path) -> None:
    grid = Grid(400, 400, (500000.0, 1.0, 0.0, 2800400.0, 0.0, -1.0), _wkt(32640))
    layer = line_layer(tmp_path / "roads.gpkg", 32640, [
        ("LINESTRING (500000 2800300, 500400 2800300)", "motorway"),
        ("LINESTRING (500000 2800100, 500400 2800100)", "residential"),
    ])
    classes = VectorMap([MapLayerSpec(str(layer))], grid).read(0, 0, 400, 400)
    road = classes == CLASS_IDS["road"]
    assert road[:, 200][80:120].sum() == pytest.approx(24, abs=1)  # motorway (row 100): 24 m
    assert road[:, 200][280:320].sum() == pytest.approx(8, abs=1)   # residential (row 300): 8 m


def test_burn_order_building_over_road(tmp_path: Path) -> None:
    grid = Grid(100, 100, (500000.0, 1.0, 0.0, 2800100.0, 0.0, -1.0), _wkt(32640))
    roads = line_layer(tmp_path / "r.gpkg", 32640, [("LINESTRING (500000 2800050, 500100 2800050)", "primary")])
    buildings = tmp_path / "b.geojson"
    buildings.write_text('{"type":"FeatureCollection","crs":{"type":"name","properties":{"name":"EPSG:32640"}},"features":[{"type":"Feature","properties":{"class":"building"},"geometry":{"type":"Polygon","coordinates":[[[500040,2800060],[500060,2800060],[500060,2800040],[500040,2800040],[500040,2800060]]]}}]}')
    classes = VectorMap([MapLayerSpec(str(buildings)), MapLayerSpec(str(roads))], grid).read(0, 0, 100, 100)
    assert classes[50, 50] == CLASS_IDS["building"]
    assert classes[50, 10] == CLASS_IDS["road"]


def test_fingerprint_tracks_the_map(fixtures_dir: Path, tmp_path: Path) -> None:
    grid = grid_of(fixtures_dir / "sample_geotiff.tif")
    spec = MapLayerSpec(str(fixtures_dir / "geotiff_labels.geojson"), fixed_class="building")
    a = VectorMap([spec], grid).fingerprint()
    assert a == VectorMap([spec], grid).fingerprint()
    other = VectorMap([MapLayerSpec(spec.path, fixed_class="water")], grid).fingerprint()
    assert a != other
    assert a != open_map([], grid, "classes").fingerprint()


def test_openstreetmap_tags_are_detected(fixtures_dir: Path) -> None:
    """The SpaceNet footprints carry OSM tags (building=yes): no assignment needed."""
    grid = grid_of(fixtures_dir / "sample_geotiff.tif")
    labels = str(fixtures_dir / "geotiff_labels.geojson")
    auto = VectorMap([MapLayerSpec(labels)], grid).read(0, 0, grid.width, grid.height)
    explicit = VectorMap([MapLayerSpec(labels, fixed_class="building")], grid).read(0, 0, grid.width, grid.height)
    assert np.array_equal(auto, explicit) and auto.any()


def test_layer_without_classes_is_explained(tmp_path: Path) -> None:
    grid = Grid(100, 100, (500000.0, 1.0, 0.0, 2800100.0, 0.0, -1.0), _wkt(32640))
    path = tmp_path / "plain.geojson"
    path.write_text('{"type":"FeatureCollection","crs":{"type":"name","properties":{"name":"EPSG:32640"}},"features":[{"type":"Feature","properties":{"id":1},"geometry":{"type":"Point","coordinates":[500050,2800050]}}]}')
    with pytest.raises(InputError, match="class="):
        VectorMap([MapLayerSpec(str(path))], grid)


def test_rgb_map_raster_is_warped_onto_the_grid(fixtures_dir: Path, tmp_path: Path) -> None:
    """A rendered basemap in EPSG:4326 for an RGB-map preset lands on the UTM raster's grid."""
    grid = grid_of(fixtures_dir / "sample_geotiff.tif")
    classes = VectorMap([MapLayerSpec(str(fixtures_dir / "geotiff_labels.geojson"), fixed_class="building")], grid).read(0, 0, grid.width, grid.height)
    rendered = tmp_path / "basemap_utm.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(rendered), grid.width, grid.height, 3, gdal.GDT_Byte)
    ds.SetGeoTransform(grid.geotransform)
    ds.SetProjection(grid.crs_wkt)
    ds.WriteRaster(0, 0, grid.width, grid.height, render_classes(classes).tobytes())
    ds = None
    basemap = tmp_path / "basemap_4326.tif"
    gdal.Warp(str(basemap), str(rendered), dstSRS="EPSG:4326", resampleAlg="near")
    warped = RasterMap(str(basemap), grid).read(0, 0, grid.width, grid.height)
    agree = (warped == render_classes(classes)).all(0).mean()
    assert warped.shape == (3, grid.height, grid.width) and agree > 0.97
    assert open_map([str(basemap)], grid, "rgb").kind == "rgb"
    assert BLOCK == 256


def _wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def test_clipped_blocks_equal_one_rasterisation_of_the_whole_map(tmp_path: Path) -> None:
    """Features are read band by band and each block burns only the geometries clipped to it;
    the pixels must be those of burning every geometry at once (checked on a real land-cover
    map that many block and band borders cross)."""
    from magc.train.data import prepare_image

    from conftest import SHARED_DATA, need

    source = need(SHARED_DATA / "dubai-aerial" / "tile7")
    item = prepare_image(source / "images" / "image_part_001.jpg", source / "masks" / "image_part_001.png", tmp_path, "t7p1", (600_000.0, 2_800_000.0))
    grid = grid_of(tmp_path / item["image"])
    assert grid.height > 2 * BAND_BLOCKS * BLOCK  # three bands
    vmap = VectorMap([MapLayerSpec(str(tmp_path / item["map"]))], grid)
    whole = grid.geo_bounds(-BLOCK, -BLOCK, grid.width + BLOCK, grid.height + BLOCK)
    geometries = sorted(vmap._layers[0].read(whole), key=lambda item: BURN_ORDER.index(CLASS_SCHEMA[item[0]]))
    assert len(geometries) >= 5

    memory = ogr.GetDriverByName("Memory").CreateDataSource("reference")
    layer = memory.CreateLayer("all", srs=vmap._srs, geom_type=ogr.wkbMultiPolygon)
    layer.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger))
    for class_id, shape in geometries:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("cls", class_id)
        feature.SetGeometry(ogr.CreateGeometryFromWkb(shape.wkb))
        layer.CreateFeature(feature)
    target = gdal.GetDriverByName("MEM").Create("", grid.width, grid.height, 1, gdal.GDT_Byte)
    target.SetGeoTransform(grid.geotransform)
    target.SetProjection(grid.crs_wkt)
    gdal.RasterizeLayer(target, [1], layer, options=["ATTRIBUTE=cls"])
    reference = target.GetRasterBand(1).ReadAsArray()
    del layer, memory

    classes = vmap.read(0, 0, grid.width, grid.height)
    assert len(np.unique(reference)) >= 3
    assert np.array_equal(classes, reference)


def test_layers_are_read_only_where_the_raster_is(tmp_path: Path) -> None:
    """A layer far larger than the raster (a country's roads under one scene) costs only the
    features under each band of the raster: the others are never converted or held."""
    height = 2 * BAND_BLOCKS * BLOCK + 52
    grid = Grid(400, height, (500000.0, 1.0, 0.0, 2800000.0 + height, 0.0, -1.0), _wkt(32640))
    rows = list(range(10, height - 20, 100))  # one residential road (8 m) every 100 px
    here = [(f"LINESTRING (500050 {2800000 + height - y}, 500350 {2800000 + height - y})", "residential") for y in rows]
    far = [(f"LINESTRING ({600000 + x} 2800000, {600000 + x} 2900000)", "primary") for x in range(0, 30000, 100)]
    vmap = VectorMap([MapLayerSpec(str(line_layer(tmp_path / "roads.gpkg", 32640, here + far)))], grid)
    band_px = BAND_BLOCKS * BLOCK
    for band in range(3):
        _, shapes, _ = vmap._band(band)
        # a road belongs to a band when its 8 m reach the band (with the 4 px margin)
        assert len(shapes) == sum(band * band_px - 8 < y + 4 and y - 4 < (band + 1) * band_px + 8 for y in rows)
    classes = vmap.read(0, 0, grid.width, grid.height)
    road = classes == CLASS_IDS["road"]
    for y in rows:
        assert road[y - 4:y + 4, 50:350].all() and not road[y - 4:y + 4, 352:].any()
    assert road.sum() == len(rows) * 8 * 300


def test_invalid_polygons_are_repaired_in_every_band_they_cross(tmp_path: Path) -> None:
    """A self-intersecting polygon is burnt as GEOS repairs it (buffer(0)), in each band it
    crosses, although its validity is checked once per feature and then remembered."""
    import shapely
    from shapely import wkt as shapely_wkt

    height = 2 * BAND_BLOCKS * BLOCK
    top = 2800000.0 + height
    grid = Grid(600, height, (500000.0, 1.0, 0.0, top, 0.0, -1.0), _wkt(32640))
    # a bow tie from row 200 to row 1800: its lobes meet at row 1000, in the first band
    bowtie = shapely_wkt.loads(f"POLYGON ((500100 {top - 200}, 500500 {top - 1800}, 500500 {top - 200}, "
                               f"500100 {top - 1800}, 500100 {top - 200}))")
    assert not bowtie.is_valid
    path = tmp_path / "bowtie.gpkg"
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32640)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = source.CreateLayer("areas", srs=srs, geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetField("class", "building")
    feature.SetGeometry(ogr.CreateGeometryFromWkt(bowtie.wkt))
    layer.CreateFeature(feature)
    feature = layer = source = None

    def burnt(shape) -> np.ndarray:
        memory = ogr.GetDriverByName("Memory").CreateDataSource("reference")
        mem_layer = memory.CreateLayer("one", srs=srs, geom_type=ogr.wkbMultiPolygon)
        one = ogr.Feature(mem_layer.GetLayerDefn())
        one.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(shape, output_dimension=2)))
        mem_layer.CreateFeature(one)
        target = gdal.GetDriverByName("MEM").Create("", grid.width, grid.height, 1, gdal.GDT_Byte)
        target.SetGeoTransform(grid.geotransform)
        target.SetProjection(grid.crs_wkt)
        gdal.RasterizeLayer(target, [1], mem_layer, burn_values=[1])
        del mem_layer, memory
        return target.GetRasterBand(1).ReadAsArray() > 0

    repaired, raw = burnt(bowtie.buffer(0)), burnt(bowtie)
    band_px = BAND_BLOCKS * BLOCK
    assert (repaired[:band_px] != raw[:band_px]).any() and (repaired[band_px:] != raw[band_px:]).any()
    vmap = VectorMap([MapLayerSpec(str(path))], grid)
    building = vmap.read(0, 0, grid.width, grid.height) == CLASS_IDS["building"]
    assert np.array_equal(building, repaired)
