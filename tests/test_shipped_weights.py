"""The embedded default: the shipped lite weights load, match their manifest, and really
compress a held-out aerial image (tile 6 was never seen in training) with its map."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from magc.api import decode_raster, encode_raster, read_info
from magc.config import load_preset
from magc.metrics import compare_rasters
from magc.models.loading import REPO_WEIGHTS, load_codec
from magc.train.data import prepare_image

from conftest import SHARED_DATA, need

WEIGHTS = REPO_WEIGHTS / "lite.safetensors"
MANIFEST = REPO_WEIGHTS / "lite.manifest.json"


@pytest.fixture(scope="module")
def lite():
    assert WEIGHTS.is_file(), "the embedded default weights must be in resources/weights"
    return load_codec("lite", device="cpu")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> tuple[Path, Path]:
    source = need(SHARED_DATA / "dubai-aerial" / "tile6")
    folder = tmp_path_factory.mktemp("held_out")
    item = prepare_image(source / "images" / "image_part_002.jpg", source / "masks" / "image_part_002.png",
                         folder, "tile6_part2", (340_000.0, 2_800_000.0))
    return folder / item["image"], folder / item["map"]


def test_manifest_matches_the_file(lite) -> None:
    manifest = json.loads(MANIFEST.read_text())
    assert manifest["sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    assert manifest["preset"] == "lite" and lite.trained
    assert WEIGHTS.stat().st_size < 16 * 2**20  # a few MB: it ships inside the plugin zip (< 25 MB with the segmenter)


def test_shipped_weights_hold_the_lite_preset(lite) -> None:
    """The file carries its own preset; it must be the one `magc presets` and training show
    (e.g. its distilled encoder side's size), or the two would describe different models."""
    assert lite.preset == load_preset("lite")
    autoencoder, lcm = lite.preset.autoencoder, lite.preset.lcm
    assert (autoencoder.encoder_widths, autoencoder.encoder_blocks, lcm.analysis_width, lcm.analysis_blocks) == ([32, 96], 0, 32, 1)


def test_manifest_records_measured_bpp_per_rate() -> None:
    rates = json.loads(MANIFEST.read_text())["bpp_per_rate"]
    if rates is None:
        pytest.skip("bpp per rate not measured yet for these weights: run `magc eval --update-manifest` (open in issue 3)")
    assert len(rates) >= 4 and min(rates.values()) <= 0.03 and all(0.01 <= v <= 0.10 for v in rates.values())


def test_held_out_image_compresses(lite, held_out, tmp_path: Path) -> None:
    raster, layer = held_out
    coded, decoded = tmp_path / "x.magc", tmp_path / "x.tif"
    report = encode_raster(raster, coded, [str(layer)], codec=lite, rate=1)
    decode_raster(coded, decoded, [str(layer)], codec=lite)
    quality = compare_rasters(raster, decoded)
    assert 0.01 <= report.bpp <= 0.06
    assert quality["ms_ssim"] > 0.6 and quality["psnr"] > 18


def test_decoded_colour_is_the_original_colour(lite, held_out, tmp_path: Path) -> None:
    """Without the band means this scene decoded 6.6 grey levels too yellow (blue 72.3 -> 65.7):
    the tiles' stored means must bring every band within about one level."""
    import numpy as np
    from osgeo import gdal

    raster, layer = held_out
    encode_raster(raster, tmp_path / "x.magc", [str(layer)], codec=lite, rate=0)
    decode_raster(tmp_path / "x.magc", tmp_path / "x.tif", [str(layer)], codec=lite)
    original, decoded = (gdal.Open(str(p)).ReadAsArray()[:3].astype(np.float64) for p in (raster, tmp_path / "x.tif"))
    assert np.abs(original.mean(axis=(1, 2)) - decoded.mean(axis=(1, 2))).max() < 1.5


def test_rates_are_ordered(lite, held_out, tmp_path: Path) -> None:
    raster, layer = held_out
    sizes = [encode_raster(raster, tmp_path / f"r{k}.magc", [str(layer)], codec=lite, rate=k).file_bytes for k in range(len(lite.preset.rates))]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_framing_overhead_of_a_2048_raster_is_small(lite, tmp_path: Path) -> None:
    """Header + framing under 3 % of the file for 2048 x 2048 RGB at about 0.03 bpp (real
    content: a held-out tile-7 scene mirrored to 2048 x 2048, with its map)."""
    from magc.bench import mirrored_raster

    source = need(SHARED_DATA / "dubai-aerial" / "tile7")
    item = prepare_image(source / "images" / "image_part_001.jpg", source / "masks" / "image_part_001.png",
                         tmp_path, "tile7_part1", (360_000.0, 2_800_000.0))
    raster, layer = mirrored_raster(tmp_path / item["image"], tmp_path / item["map"], 2048, tmp_path)
    report = encode_raster(raster, tmp_path / "big.magc", [str(layer)], codec=lite, rate=0)  # the lowest rate
    overhead = report.header_bytes + report.framing_bytes
    assert read_info(tmp_path / "big.magc")["bytes_by_part"]["header_and_framing"] == overhead
    assert 0.015 <= report.bpp <= 0.04
    assert overhead / report.file_bytes < 0.03


def test_the_map_shapes_the_land_cover_of_the_reconstruction(lite, tmp_path: Path) -> None:
    """The map costs no bits and carries land cover (the decoder reads it since stage 3): the
    same file decoded with its map is segmented closer to the ground truth than decoded with
    no map at all (``ignore_map_mismatch``, every pixel background), by the evaluation's own
    segmenter, on a held-out scene with buildings, roads and vegetation."""
    import numpy as np
    from osgeo import gdal

    from magc.metrics import miou
    from magc.segmentation import load_segmenter, segment_raster

    net = load_segmenter()
    if net is None:
        pytest.skip("no segmentation weights in resources/weights (make train-segmentation)")
    source = need(SHARED_DATA / "dubai-aerial" / "tile6")
    item = prepare_image(source / "images" / "image_part_005.jpg", source / "masks" / "image_part_005.png",
                         tmp_path, "tile6_part5", (340_000.0, 2_800_000.0))
    raster, layer, labels = (tmp_path / item[key] for key in ("image", "map", "labels"))
    truth = gdal.Open(str(labels)).ReadAsArray()
    encode_raster(raster, tmp_path / "x.magc", [str(layer)], codec=lite, rate=0)
    scores = {}
    for name, maps in (("map", [str(layer)]), ("no map", [])):
        out = tmp_path / f"{name}.tif"
        decode_raster(tmp_path / "x.magc", out, maps, codec=lite, ignore_map_mismatch=not maps)
        scores[name] = miou(segment_raster(net, out), truth, 5)[0]
    original = miou(segment_raster(net, raster), truth, 5)[0]
    assert scores["map"] > scores["no map"] + 0.1, scores
    assert scores["map"] > 0.6 * original, (scores, original)
    assert np.isfinite(original)
