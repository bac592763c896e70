"""Every MAGC algorithm through processing.run on the shared fixtures (tiny presets, random
weights: the GIS contract is checked, not image quality): valid layers with the input's CRS
and extent, cancel leaves no file, corrupted files and wrong maps give QgsProcessingException."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsCoordinateReferenceSystem, QgsProcessingException, QgsProcessingFeedback, QgsRasterLayer

from plugin_helpers import (  # noqa: F401 (fixtures)
    TINY, add_raster, add_vector, crops, magc_provider, no_partial_files, project, single_thread)

import processing

pytestmark = pytest.mark.usefixtures("magc_provider")


def assert_same_grid(output: str | Path, original: QgsRasterLayer) -> None:
    layer = QgsRasterLayer(str(output), "out")
    try:
        assert layer.isValid(), output
        assert layer.crs() == original.crs()
        assert layer.extent() == original.extent()
        assert (layer.width(), layer.height(), layer.bandCount()) == (original.width(), original.height(), original.bandCount())
    finally:
        del layer


def encode(raster, output: Path, **extra) -> dict:
    return processing.run("magc:encode_raster", {"INPUT": raster, "RATE": 0, "OUTPUT": str(output), **TINY, **extra})


def test_encode_decode_with_a_vector_map(project, crops, tmp_path: Path) -> None:
    raster = add_raster(project, crops["sample"])
    buildings = add_vector(project, crops["buildings"])  # OSM tags: classes detected
    result = encode(raster, tmp_path / "s.magc", MAPS=[buildings])
    assert Path(result["OUTPUT"]).is_file()
    assert result["BYTES"] == Path(result["OUTPUT"]).stat().st_size
    assert 0 < result["BPP"] < 1 and result["DEVICE_USED"] == "cpu" and len(result["MAP_FINGERPRINT"]) == 16

    decoded = processing.run("magc:decode_file", {"INPUT": result["OUTPUT"], "MAPS": [buildings], "DEVICE": "cpu",
                                                  "OUTPUT": str(tmp_path / "s.tif")})
    assert_same_grid(decoded["OUTPUT"], raster)
    direct = processing.run("magc:decode_file", {"INPUT": result["OUTPUT"], "MAPS": [buildings], "DEVICE": "cpu",
                                                 "STRENGTH": 0, "OUTPUT": str(tmp_path / "s0.tif")})
    assert_same_grid(direct["OUTPUT"], raster)  # without the denoiser: another reconstruction of the same file
    assert not np.array_equal(gdal.Open(direct["OUTPUT"]).ReadAsArray(), gdal.Open(decoded["OUTPUT"]).ReadAsArray())

    with pytest.raises(QgsProcessingException, match="map layers differ"):
        processing.run("magc:decode_file", {"INPUT": result["OUTPUT"], "DEVICE": "cpu", "OUTPUT": str(tmp_path / "t.tif")})
    assert not (tmp_path / "t.tif").exists()


def test_filtered_layer_is_exported_and_class_assignment_used(project, crops, tmp_path: Path) -> None:
    raster = add_raster(project, crops["sample"])
    buildings = add_vector(project, crops["buildings"])
    buildings.setSubsetString('"building" IS NOT NULL')  # not a plain file any more: exported in prepare
    params = {"MAPS": [buildings], "MAP_CLASSES": "class=building"}
    result = encode(raster, tmp_path / "f.magc", **params)
    decoded = processing.run("magc:decode_file", {"INPUT": result["OUTPUT"], "DEVICE": "cpu",
                                                  "OUTPUT": str(tmp_path / "f.tif"), **params})
    assert_same_grid(decoded["OUTPUT"], raster)
    feedback = QgsProcessingFeedback()  # errors found while preparing (main thread) go to the log
    with pytest.raises(QgsProcessingException):
        processing.run("magc:encode_raster", {"INPUT": raster, "MAPS": [buildings], "MAP_CLASSES": "class=castle",
                                              "OUTPUT": str(tmp_path / "g.magc"), **TINY}, feedback=feedback)
    assert "class assignment 'class=castle' not understood" in feedback.textLog()


def test_roundtrip_reports_metrics_and_reconstruction(project, crops, tmp_path: Path) -> None:
    raster = add_raster(project, crops["rgb"])
    result = processing.run("magc:roundtrip", {"INPUT": raster, "OUTPUT_FOLDER": str(tmp_path / "rt"), **TINY})
    assert_same_grid(result["OUTPUT"], raster)
    assert Path(result["FILE"]).is_file() and Path(result["REPORT"]).is_file()
    assert math.isfinite(result["PSNR"]) and 0 <= result["MS_SSIM"] <= 1 and result["BPP"] > 0


def test_batch_encode_layers_and_folder(project, crops, tmp_path: Path) -> None:
    rgb = add_raster(project, crops["rgb"])
    road = add_raster(project, crops["road"])  # EPSG:4326
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "rgb.tif").write_bytes(crops["rgb"].read_bytes())  # same name as a layer: gets rgb_2.magc
    result = processing.run("magc:batch_encode", {"INPUTS": [rgb, road], "FOLDER": str(folder),
                                                  "OUTPUT_FOLDER": str(tmp_path / "out"), **TINY})
    assert result["COUNT"] == 3
    names = sorted(p.name for p in (tmp_path / "out").glob("*.magc"))
    assert names == ["rgb.magc", "rgb_2.magc", "road.magc"]
    with open(result["SUMMARY"]) as handle:
        assert [float(row["bpp"]) > 0 for row in csv.DictReader(handle)] == [True] * 3


def test_baseline_matches_the_magc_bitrate(project, crops, tmp_path: Path) -> None:
    raster = add_raster(project, crops["rgb"])
    coded = encode(raster, tmp_path / "r.magc")
    result = processing.run("magc:baseline", {"INPUT": raster, "MATCH_FILE": coded["OUTPUT"],
                                              "OUTPUT": str(tmp_path / "r.jp2")})
    assert result["REACHED"] == 1 and result["BPP_REACHED"] >= coded["BPP"]
    assert_same_grid(result["OUTPUT"], raster)
    assert math.isfinite(result["PSNR"])
    feedback = QgsProcessingFeedback()
    with pytest.raises(QgsProcessingException):
        processing.run("magc:baseline", {"INPUT": raster, "OUTPUT": str(tmp_path / "n.jp2")}, feedback=feedback)
    assert "needs a target" in feedback.textLog()


def test_compare_gives_metrics_and_a_difference_layer(project, crops, tmp_path: Path) -> None:
    raster = add_raster(project, crops["rgb"])
    coded = encode(raster, tmp_path / "c.magc")
    decoded = processing.run("magc:decode_file", {"INPUT": coded["OUTPUT"], "DEVICE": "cpu",
                                                  "OUTPUT": str(tmp_path / "c.tif")})
    result = processing.run("magc:compare", {"ORIGINAL": raster, "RECONSTRUCTION": decoded["OUTPUT"],
                                             "MAGC_FILE": coded["OUTPUT"], "DIFFERENCE": str(tmp_path / "d.tif")})
    assert result["BPP"] == pytest.approx(coded["BPP"])
    assert math.isfinite(result["PSNR"]) and result["DIFFERENCE_P98"] > 0
    difference = QgsRasterLayer(result["DIFFERENCE"], "d")
    assert difference.isValid() and difference.crs() == raster.crs() and difference.extent() == raster.extent()
    del difference


class CancelDuringTiles(QgsProcessingFeedback):
    """Cancels once the library reports real progress (a tile written), like a user would."""

    def setProgress(self, progress):  # noqa: N802
        super().setProgress(progress)
        if progress > 0:
            self.cancel()


def test_cancel_leaves_no_file(project, crops, tmp_path: Path) -> None:
    raster = add_raster(project, crops["rgb"])
    output = tmp_path / "x.magc"
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("magc:encode_raster", {"INPUT": raster, "OUTPUT": str(output), **TINY},
                       feedback=CancelDuringTiles())
    assert not output.exists() and no_partial_files(tmp_path)

    coded = encode(raster, output)
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("magc:decode_file", {"INPUT": coded["OUTPUT"], "DEVICE": "cpu", "OUTPUT": str(tmp_path / "x.tif")},
                       feedback=CancelDuringTiles())
    assert not (tmp_path / "x.tif").exists() and no_partial_files(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
def test_corrupted_file_is_a_processing_error(project, crops, tmp_path: Path, damage: str) -> None:
    raster = add_raster(project, crops["rgb"])
    data = Path(encode(raster, tmp_path / "ok.magc")["OUTPUT"]).read_bytes()
    bad = tmp_path / "bad.magc"
    if damage == "garbage":
        bad.write_bytes(b"not a magc file at all" * 10)
    elif damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(data[:-40] + bytes(b ^ 0xFF for b in data[-40:]))
    with pytest.raises(QgsProcessingException):
        processing.run("magc:decode_file", {"INPUT": str(bad), "DEVICE": "cpu", "OUTPUT": str(tmp_path / "bad.tif")})
    assert not (tmp_path / "bad.tif").exists() and no_partial_files(tmp_path)


def test_untrained_weights_are_refused_without_the_option(project, crops, tmp_path: Path) -> None:
    raster = add_raster(project, crops["rgb"])
    with pytest.raises(QgsProcessingException, match="Allow untrained"):
        processing.run("magc:encode_raster", {"INPUT": raster, "PRESET": "tiny-lite", "DEVICE": "cpu",
                                              "OUTPUT": str(tmp_path / "u.magc")})
    assert not (tmp_path / "u.magc").exists()


def test_layer_crs_override_is_honoured(project, crops) -> None:
    """A raster shown in another CRS than its file's is snapshot as a VRT with the layer's CRS."""
    from osgeo import gdal

    from magc_qgis.processing.snapshot import raster_snapshot

    layer = add_raster(project, crops["rgb"])
    assert raster_snapshot(layer).path == str(crops["rgb"])
    layer.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    snapshot = raster_snapshot(layer)
    assert snapshot.path.endswith(".vrt")
    vrt = gdal.Open(snapshot.path)
    assert QgsCoordinateReferenceSystem.fromWkt(vrt.GetProjection()).authid() == "EPSG:3857"
    vrt = None
