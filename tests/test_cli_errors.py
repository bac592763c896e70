"""Bad input through the real command line: one line on stderr, exit status 2, no traceback,
no partial output, inputs untouched, an existing output never overwritten by a failure."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from osgeo import gdal, ogr, osr

from conftest import smooth_image, write_geotiff

TINY = ["--preset", "tiny-lite", "--allow-untrained", "--device", "cpu", "-q"]


def magc(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magc.cli", *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def assert_clean_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("magc: error: "), result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    write_geotiff(folder / "in.tif", smooth_image(140, 150))
    write_geotiff(folder / "nocrs.tif", smooth_image(140, 150), epsg=None)
    write_geotiff(folder / "float.tif", smooth_image(140, 150).astype("uint8"))
    ds = gdal.GetDriverByName("GTiff").Create(str(folder / "float32.tif"), 70, 70, 1, gdal.GDT_Float32)
    ds = None
    (folder / "notes.txt").write_text("not a raster\n")
    # an empty layer and a layer without CRS
    driver = ogr.GetDriverByName("GPKG")
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32640)
    source = driver.CreateDataSource(str(folder / "empty.gpkg"))
    source.CreateLayer("roads", srs=srs, geom_type=ogr.wkbLineString)
    source = None
    source = driver.CreateDataSource(str(folder / "nocrs.gpkg"))
    layer = source.CreateLayer("b", srs=None, geom_type=ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON ((500010 2799990, 500050 2799990, 500050 2799950, 500010 2799990))"))
    layer.CreateFeature(feature)
    feature = layer = source = None
    source = driver.CreateDataSource(str(folder / "buildings.gpkg"))
    layer = source.CreateLayer("b", srs=srs, geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetField("class", "building")
    feature.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON ((500010 2799990, 500080 2799990, 500080 2799920, 500010 2799990))"))
    layer.CreateFeature(feature)
    feature = layer = source = None
    (folder / "broken.gpkg").write_bytes(b"SQLite format 3\x00" + b"\x13" * 200)
    result = magc("encode", folder / "in.tif", "-o", folder / "good.magc", "--map", folder / "buildings.gpkg", *TINY)
    assert result.returncode == 0, result.stderr
    return folder


def test_successful_encode_reports_device_and_bpp(workdir: Path) -> None:
    result = magc("encode", workdir / "in.tif", "-o", workdir / "ok.magc", *TINY)
    assert result.returncode == 0
    assert "bpp" in result.stderr and "device cpu" in result.stderr


@pytest.mark.parametrize(
    "args,needles",
    [
        (["encode", "{d}/missing.tif", "-o", "{d}/x.magc"], ["not found"]),
        (["encode", "{d}/notes.txt", "-o", "{d}/x.magc"], ["raster"]),
        (["encode", "{d}", "-o", "{d}/x.magc"], ["folder"]),
        (["encode", "{d}/float32.tif", "-o", "{d}/x.magc"], ["data type"]),
        (["encode", "{d}/in.tif", "-o", "{d}/x.magc", "--map", "{d}/empty.gpkg"], ["empty"]),
        (["encode", "{d}/in.tif", "-o", "{d}/x.magc", "--map", "{d}/nocrs.gpkg|class=building"], ["no crs"]),
        (["encode", "{d}/in.tif", "-o", "{d}/x.magc", "--map", "{d}/broken.gpkg"], ["map layer"]),
        (["encode", "{d}/in.tif", "-o", "{d}/x.magc", "--map", "{d}/missing.gpkg"], ["not found"]),
        (["encode", "{d}/in.tif", "-o", "{d}/x.magc", "--map", "{d}/buildings.gpkg|class=castle"], ["unknown class"]),
        (["encode", "{d}/nocrs.tif", "-o", "{d}/x.magc", "--map", "{d}/buildings.gpkg"], ["no crs"]),
        (["encode", "{d}/in.tif", "-o", "{d}/x.magc", "--rate", "7"], ["rate 7"]),
        (["encode", "{d}/in.tif", "-o", "{d}/no/such/dir/x.magc"], ["folder"]),
        (["encode", "{d}/in.tif", "-o", "{d}/in.tif"], ["overwrite"]),
        (["encode", "{d}/in.tif", "-o", "{d}/x.magc", "--device", "cuda:3"], ["cuda"]),
        (["decode", "{d}/missing.magc", "-o", "{d}/x.tif"], ["not found"]),
        (["decode", "{d}/in.tif", "-o", "{d}/x.tif"], ["not a magc file"]),
        (["decode", "{d}/good.magc", "-o", "{d}/x.tif"], ["map"]),
        (["decode", "{d}/good.magc", "-o", "{d}/x.tif", "--map", "{d}/buildings.gpkg", "--strength", "1.5"], ["strength", "between 0 and 1"]),
        (["info", "{d}/notes.txt"], ["not a magc file"]),
        (["train", "--preset", "tiny-lite", "--data", "{d}", "--run", "{d}/run", "--steps", "5"], ["STAGE1,STAGE2[,CRITIC[,STAGE3]]"]),
        (["train", "--preset", "tiny-lite", "--data", "{d}", "--run", "{d}/run", "--steps", "5,x"], ["--steps"]),
        (["train", "--preset", "tiny-lite", "--data", "{d}", "--run", "{d}/run", "--semantic-weight", "-1"], ["--semantic-weight"]),
        (["train", "--preset", "tiny-lite", "--data", "{d}", "--run", "{d}/run", "--semantic-weight", "0.3,1,2"], ["--semantic-weight", "W2,W3"]),
        (["train", "--preset", "tiny-lite", "--data", "{d}", "--run", "{d}/run", "--semantic-weight", "nan"], ["--semantic-weight"]),
        (["train", "--preset", "tiny-lite", "--data", "{d}", "--run", "{d}/run", "--lr", "0"], ["--lr", "> 0"]),
        (["train", "--preset", "tiny-lite", "--data", "{d}", "--run", "{d}/run", "--lr", "1e-4,2e-4"], ["--lr", "LR1,LR2,LR3"]),
        (["train", "--preset", "tiny-lite", "--data", "{d}", "--run", "{d}/run", "--lr", "inf"], ["--lr"]),
        (["train", "--preset", "tiny-sd21", "--data", "{d}", "--run", "{d}/run", "--lr", "1e-4,2e-4,3e-4"], ["one learning rate"]),
        (["train", "--preset", "tiny-lite", "--data", "{d}", "--run", "{d}/run", "--stages", "2,x"], ["--stages", "1, 2, 3"]),
        (["train", "--preset", "tiny-lite", "--data", "{d}", "--run", "{d}/run", "--stages", "4"], ["--stages", "1, 2, 3"]),
    ],
)
def test_bad_input_gives_one_line_and_status_2(workdir: Path, args: list[str], needles: list[str]) -> None:
    args = [a.format(d=workdir) for a in args]
    extra = TINY if args[0] == "encode" else (["--device", "cpu", "-q"] if args[0] == "decode" else [])
    if "--device" in args:
        extra = [e for e in TINY if e not in ("--device", "cpu")]
    before = sorted(p.name for p in workdir.iterdir())
    result = magc(*args, *extra)
    assert_clean_failure(result, *needles)
    assert sorted(p.name for p in workdir.iterdir()) == before  # nothing written, nothing partial


def test_untrained_preset_is_refused_without_flag(workdir: Path, tmp_path: Path) -> None:
    result = magc("encode", workdir / "in.tif", "-o", tmp_path / "x.magc", "--preset", "tiny-lite", "--device", "cpu", "-q")
    assert_clean_failure(result, "no trained weights", "--allow-untrained")
    assert not (tmp_path / "x.magc").exists()


def test_truncated_and_corrupted_files(workdir: Path, tmp_path: Path) -> None:
    data = (workdir / "good.magc").read_bytes()
    (tmp_path / "cut.magc").write_bytes(data[: len(data) // 2])
    assert_clean_failure(magc("decode", tmp_path / "cut.magc", "-o", tmp_path / "x.tif", "--device", "cpu", "-q"), "truncated")
    flipped = bytearray(data)
    flipped[-7] ^= 0x10
    (tmp_path / "bad.magc").write_bytes(bytes(flipped))
    assert_clean_failure(magc("decode", tmp_path / "bad.magc", "-o", tmp_path / "x.tif", "--map", workdir / "buildings.gpkg", "--device", "cpu", "-q"), "corrupted")
    wrong_version = bytearray(data)
    wrong_version[4] = 3
    (tmp_path / "v3.magc").write_bytes(bytes(wrong_version))
    assert_clean_failure(magc("info", tmp_path / "v3.magc"), "version 3")
    assert not (tmp_path / "x.tif").exists()


def test_model_mismatch(workdir: Path, tmp_path: Path) -> None:
    """Decoding with other weights than the encoder's is refused (header hash)."""
    from magc.models.loading import load_codec
    from magc.models.weights import save_weights

    other = load_codec("tiny-lite", allow_untrained=True, device="cpu", seed=5)
    save_weights(other.codec, other.preset, tmp_path / "other.safetensors", trained=True, source="test")
    result = magc("decode", workdir / "good.magc", "-o", tmp_path / "x.tif", "--map", workdir / "buildings.gpkg",
                  "--weights", tmp_path / "other.safetensors", "--device", "cpu", "-q")
    assert_clean_failure(result, "other weights")


def test_failed_decode_keeps_an_existing_output(workdir: Path, tmp_path: Path) -> None:
    target = tmp_path / "existing.tif"
    shutil.copy(workdir / "in.tif", target)
    before = target.read_bytes()
    result = magc("decode", workdir / "good.magc", "-o", target, "--device", "cpu", "-q")  # no map: mismatch
    assert_clean_failure(result, "map")
    assert target.read_bytes() == before


def test_inputs_are_not_modified(workdir: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in (workdir / "in.tif", workdir / "buildings.gpkg")}
    result = magc("roundtrip", workdir / "in.tif", "--map", workdir / "buildings.gpkg", "-o", tmp_path, *TINY)
    assert result.returncode == 0, result.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_decode_with_the_map_succeeds(workdir: Path, tmp_path: Path) -> None:
    result = magc("decode", workdir / "good.magc", "-o", tmp_path / "x.tif", "--map", workdir / "buildings.gpkg", "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr
    assert gdal.Open(str(tmp_path / "x.tif")).RasterXSize == 150
