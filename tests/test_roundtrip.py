"""Round trips on the real georeferenced fixtures with tiny random-weight codecs.

What is checked is the GIS contract, not image quality (the weights are random): size,
bands, data type, geotransform, CRS and nodata come back exactly; nodata pixels are nodata
again and valid pixels are not; decoding needs only the file and the map.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from magc.api import decode_raster, encode_raster, read_info, roundtrip
from magc.cli import main
from magc.errors import UsageError

from conftest import smooth_image, write_geotiff

gdal.UseExceptions()


def assert_same_grid(original: Path, decoded: Path) -> None:
    a, b = gdal.Open(str(original)), gdal.Open(str(decoded))
    assert (a.RasterXSize, a.RasterYSize, a.RasterCount) == (b.RasterXSize, b.RasterYSize, b.RasterCount)
    assert a.GetGeoTransform() == b.GetGeoTransform()
    assert a.GetRasterBand(1).DataType == b.GetRasterBand(1).DataType
    assert a.GetRasterBand(1).GetNoDataValue() == b.GetRasterBand(1).GetNoDataValue()
    sa, sb = osr.SpatialReference(wkt=a.GetProjection()), osr.SpatialReference(wkt=b.GetProjection())
    assert sa.IsSame(sb)


def nodata_mask(path: Path) -> np.ndarray:
    ds = gdal.Open(str(path))
    nodata = ds.GetRasterBand(1).GetNoDataValue()
    data = ds.ReadAsArray().reshape(ds.RasterCount, ds.RasterYSize, ds.RasterXSize)
    return np.all(data == nodata, axis=0) if nodata is not None else np.zeros(data.shape[1:], bool)


def reproject_layer(source: Path, target: Path, epsg: int) -> Path:
    gdal.VectorTranslate(str(target), str(source), dstSRS=f"EPSG:{epsg}", format="GPKG")
    return target


@pytest.mark.parametrize("name", ["RGB.byte.tif", "sample_geotiff.tif", "road_mask_input.tif"])
def test_fixture_round_trip(name: str, fixtures_dir: Path, tmp_path: Path, tiny_lite) -> None:
    source = tmp_path / name
    shutil.copy(fixtures_dir / name, source)  # the decoder must not need the original
    coded, decoded = tmp_path / "x.magc", tmp_path / "x.tif"
    report = encode_raster(source, coded, codec=tiny_lite, rate=0)
    assert report.file_bytes == coded.stat().st_size
    assert report.bpp == pytest.approx(8 * coded.stat().st_size / (report.width * report.height))
    mask_before = nodata_mask(source)
    source_copy = tmp_path / "original.tif"
    source.rename(source_copy)
    decode_raster(coded, decoded, codec=tiny_lite)
    assert_same_grid(source_copy, decoded)
    assert np.array_equal(nodata_mask(decoded), mask_before)


def test_vector_map_in_another_crs(fixtures_dir: Path, tmp_path: Path, tiny_lite) -> None:
    """Buildings given in EPSG:4326 over a UTM raster: reprojected, rasterised, fingerprinted."""
    layer = reproject_layer(fixtures_dir / "geotiff_labels.geojson", tmp_path / "buildings_4326.gpkg", 4326)
    spec = f"{layer}|class=building"
    coded, decoded = tmp_path / "b.magc", tmp_path / "b.tif"
    encode_raster(fixtures_dir / "sample_geotiff.tif", coded, [spec], codec=tiny_lite)
    decode_raster(coded, decoded, [spec], codec=tiny_lite)
    assert_same_grid(fixtures_dir / "sample_geotiff.tif", decoded)
    # the same buildings in the raster's own CRS give (almost) the same class map, hence
    # usually the same fingerprint; a different map must be refused
    from magc.errors import MapMismatchError

    with pytest.raises(MapMismatchError):
        decode_raster(coded, tmp_path / "c.tif", [], codec=tiny_lite)
    assert not (tmp_path / "c.tif").exists()


def test_sixteen_bit_values_are_restored_in_range(fixtures_dir: Path, tmp_path: Path, tiny_lite) -> None:
    coded, decoded = tmp_path / "r.magc", tmp_path / "r.tif"
    encode_raster(fixtures_dir / "road_mask_input.tif", coded, codec=tiny_lite)
    info = read_info(coded)
    assert info["dtype"] == "uint16"
    decode_raster(coded, decoded, codec=tiny_lite)
    original = gdal.Open(str(fixtures_dir / "road_mask_input.tif")).ReadAsArray()
    lo, hi = np.percentile(original, [0.05, 99.95])
    out = gdal.Open(str(decoded)).ReadAsArray()
    assert out.dtype == np.uint16
    assert out.min() >= int(lo) - 1 and out.max() <= int(hi) + 1


@pytest.mark.parametrize("bands,alpha", [(1, False), (2, False), (4, False), (4, True)])
def test_band_layouts(bands: int, alpha: bool, tmp_path: Path, tiny_lite) -> None:
    image = smooth_image(150, 170, bands)
    if alpha:
        image[-1] = 255
        image[-1, :40, :40] = 0
    raster = write_geotiff(tmp_path / "in.tif", image, alpha=alpha)
    coded, decoded = tmp_path / "x.magc", tmp_path / "x.tif"
    encode_raster(raster, coded, codec=tiny_lite)
    decode_raster(coded, decoded, codec=tiny_lite)
    assert_same_grid(raster, decoded)
    out = gdal.Open(str(decoded))
    if alpha:
        assert out.GetRasterBand(4).GetColorInterpretation() == gdal.GCI_AlphaBand
        assert np.array_equal(out.GetRasterBand(4).ReadAsArray() > 0, image[-1] > 0)


def test_all_nodata_tiles_are_skipped(tmp_path: Path, tiny_lite) -> None:
    image = smooth_image(300, 300)
    image[:, :, :150] = 0
    raster = write_geotiff(tmp_path / "in.tif", image, nodata=0)
    coded = tmp_path / "x.magc"
    report = encode_raster(raster, coded, codec=tiny_lite)
    assert report.skipped_tiles == 3  # 128 px cores: the whole first column (x < 128) is nodata
    decode_raster(coded, tmp_path / "x.tif", codec=tiny_lite)
    assert np.array_equal(nodata_mask(tmp_path / "x.tif"), nodata_mask(raster))


def test_embedded_map_makes_the_file_self_contained(fixtures_dir: Path, tmp_path: Path, tiny_lite) -> None:
    labels = fixtures_dir / "geotiff_labels.geojson"
    spec = f"{labels}|class=building"
    plain, embedded = tmp_path / "plain.magc", tmp_path / "embedded.magc"
    a = encode_raster(fixtures_dir / "sample_geotiff.tif", plain, [spec], codec=tiny_lite)
    b = encode_raster(fixtures_dir / "sample_geotiff.tif", embedded, [spec], codec=tiny_lite, embed_map=True)
    assert b.map_bytes > 0 and a.map_bytes == 0
    assert b.file_bytes == a.file_bytes + b.map_bytes + (b.framing_bytes - a.framing_bytes)
    assert b.bpp_without_map == pytest.approx(8 * (b.file_bytes - b.map_bytes) / (b.width * b.height))
    decode_raster(plain, tmp_path / "plain.tif", [spec], codec=tiny_lite)
    decode_raster(embedded, tmp_path / "embedded.tif", [], codec=tiny_lite)  # no layer needed
    assert np.array_equal(gdal.Open(str(tmp_path / "plain.tif")).ReadAsArray(), gdal.Open(str(tmp_path / "embedded.tif")).ReadAsArray())


def test_decoding_is_repeatable(tmp_path: Path, tiny_lite) -> None:
    raster = write_geotiff(tmp_path / "in.tif", smooth_image(200, 260))
    coded = tmp_path / "x.magc"
    encode_raster(raster, coded, codec=tiny_lite)
    decode_raster(coded, tmp_path / "a.tif", codec=tiny_lite)
    decode_raster(coded, tmp_path / "b.tif", codec=tiny_lite)
    assert np.array_equal(gdal.Open(str(tmp_path / "a.tif")).ReadAsArray(), gdal.Open(str(tmp_path / "b.tif")).ReadAsArray())


def test_decode_strength_overrides_the_sampler(tmp_path: Path, tiny_lite, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same file decodes with another sampling strength; 0 is z~ decoded without the
    denoiser, and a strength outside [0, 1] is refused before anything is written."""
    raster = write_geotiff(tmp_path / "in.tif", smooth_image(200, 260))
    coded = tmp_path / "x.magc"
    encode_raster(raster, coded, codec=tiny_lite)
    default = decode_raster(coded, tmp_path / "default.tif", codec=tiny_lite)
    assert default.strength == tiny_lite.preset.sampler.strength > 0
    calls: list[int] = []
    forward = tiny_lite.codec.denoiser.forward
    monkeypatch.setattr(tiny_lite.codec.denoiser, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    direct = decode_raster(coded, tmp_path / "direct.tif", codec=tiny_lite, strength=0)
    assert direct.strength == 0.0 and calls == []
    a, b = (gdal.Open(str(tmp_path / name)).ReadAsArray() for name in ("default.tif", "direct.tif"))
    assert a.shape == b.shape and not np.array_equal(a, b)
    decode_raster(coded, tmp_path / "again.tif", codec=tiny_lite, strength=1.0)
    assert calls  # strength 1 samples with the denoiser
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(UsageError, match="strength"):
            decode_raster(coded, tmp_path / "bad.tif", codec=tiny_lite, strength=bad)
    assert not (tmp_path / "bad.tif").exists()


def test_cli_roundtrip_writes_file_reconstruction_and_report(fixtures_dir: Path, tmp_path: Path, capsys) -> None:
    labels = fixtures_dir / "geotiff_labels.geojson"
    code = main(["roundtrip", str(fixtures_dir / "sample_geotiff.tif"), "--map", f"{labels}|class=building",
                 "--preset", "tiny-lite", "--allow-untrained", "--device", "cpu", "-q", "-o", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "sample_geotiff.json").read_text())
    assert (tmp_path / "sample_geotiff.magc").stat().st_size * 8 / (900 * 900) == pytest.approx(report["bpp"])
    assert 0 < report["psnr"] < 100 and -1 <= report["ms_ssim"] <= 1
    assert_same_grid(fixtures_dir / "sample_geotiff.tif", tmp_path / "sample_geotiff.magc.tif")
    info = json.loads(subprocess.run([sys.executable, "-m", "magc.cli", "info", str(tmp_path / "sample_geotiff.magc")],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["preset"] == "tiny-lite" and info["crs"] == "EPSG:32616"


def test_target_bpp_picks_the_highest_rate_that_meets_it(tmp_path: Path, tiny_lite) -> None:
    raster = write_geotiff(tmp_path / "in.tif", smooth_image(256, 256))
    per_rate = [encode_raster(raster, tmp_path / f"r{k}.magc", codec=tiny_lite, rate=k).bpp for k in range(2)]
    assert per_rate[0] < per_rate[1]
    generous = encode_raster(raster, tmp_path / "g.magc", codec=tiny_lite, bpp=per_rate[1] * 1.5)
    assert generous.rate == 1
    between = encode_raster(raster, tmp_path / "b.magc", codec=tiny_lite, bpp=(per_rate[0] + per_rate[1]) / 2)
    assert between.rate == 0 and between.bpp <= per_rate[1]


def test_cancel_leaves_no_file(tmp_path: Path, tiny_lite) -> None:
    from magc.errors import Cancelled

    raster = write_geotiff(tmp_path / "in.tif", smooth_image(300, 300))
    seen: list[float] = []
    with pytest.raises(Cancelled):
        encode_raster(raster, tmp_path / "x.magc", codec=tiny_lite, progress=lambda f, m: seen.append(f), cancel=lambda: len(seen) >= 3)
    assert not (tmp_path / "x.magc").exists() and not list(tmp_path.glob(".*partial"))
    encode_raster(raster, tmp_path / "x.magc", codec=tiny_lite)
    seen.clear()
    with pytest.raises(Cancelled):
        decode_raster(tmp_path / "x.magc", tmp_path / "x.tif", codec=tiny_lite, progress=lambda f, m: seen.append(f), cancel=lambda: len(seen) >= 4)
    assert not (tmp_path / "x.tif").exists() and not list(tmp_path.glob(".*partial"))
    assert seen == sorted(seen) and all(0 <= f <= 1 for f in seen)
