"""``magc bench`` / ``make bench``: speed and peak memory of the lite codec, beside GDAL JPEG 2000.

Speed: encode and decode of a real validation scene (tile 7, part 1: 1817 x 2061 px, with its
land-cover GeoPackage) through the public API, i.e. every step (GDAL I/O, map
rasterisation and fingerprint, networks, entropy coding, blending, GeoTIFF writing); the
median of several runs, with the model loaded once. JPEG 2000 through GDAL is timed on the
same raster at the bpp the codec reached, in the same run.

Memory: the peak resident memory of a fresh ``magc encode`` / ``magc decode`` process on
square rasters of growing size, built by mirroring the same scene (and its map), so that
growth with raster size, or its absence, is visible.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from osgeo import gdal, ogr

from .api import decode_raster, encode_raster
from .baselines import decode_seconds, encode_baseline
from .models.loading import load_codec
from .train.data import prepare_image

gdal.UseExceptions()
SCENE = ("tile7", 1)

PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def _scene(shared_data: Path, folder: Path) -> tuple[Path, Path]:
    tile, part = SCENE
    source = shared_data / "dubai-aerial" / tile
    item = prepare_image(source / "images" / f"image_part_00{part}.jpg", source / "masks" / f"image_part_00{part}.png",
                         folder, f"{tile}_part{part}", (360_000.0, 2_800_000.0))
    return folder / item["image"], folder / item["map"]


def mirrored_raster(scene: Path, layer: Path, size: int, folder: Path) -> tuple[Path, Path]:
    """A size x size raster (and map) tiling the scene with mirror flips, written window by window."""
    source = gdal.Open(str(scene))
    image = source.ReadAsArray()
    h, w = image.shape[1:]
    gt = source.GetGeoTransform()
    raster = folder / f"mirror_{size}.tif"
    target = gdal.GetDriverByName("GTiff").Create(str(raster), size, size, 3, gdal.GDT_Byte, ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"])
    target.SetGeoTransform(gt)
    target.SetProjection(source.GetProjection())
    for ty in range(0, size, h):
        for tx in range(0, size, w):
            block = image[:, :, ::-1] if (tx // w) % 2 else image
            block = block[:, ::-1] if (ty // h) % 2 else block
            block = block[:, : min(h, size - ty), : min(w, size - tx)]
            for b in range(3):
                target.GetRasterBand(b + 1).WriteArray(np.ascontiguousarray(block[b]), tx, ty)
    target = None
    return raster, _mirrored_layer(layer, gt, w, h, size, folder)


def _mirrored_layer(layer: Path, gt: tuple, w: int, h: int, size: int, folder: Path) -> Path:
    import shapely
    from shapely import affinity, wkb

    out = folder / f"mirror_{size}.gpkg"
    src_ds = ogr.Open(str(layer))
    src = src_ds.GetLayer(0)
    dst_ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(out))
    dst = dst_ds.CreateLayer("landcover", srs=src.GetSpatialRef(), geom_type=ogr.wkbPolygon)
    dst.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    features = [(f.GetField("class"), wkb.loads(bytes(f.GetGeometryRef().ExportToWkb()))) for f in src]
    x0, y0, px = gt[0], gt[3], gt[1]
    dst_ds.StartTransaction()
    for ty in range(0, size, h):
        for tx in range(0, size, w):
            for name, shape in features:
                if (tx // w) % 2:
                    shape = affinity.scale(shape, -1, 1, origin=(x0 + w * px / 2, 0))
                if (ty // h) % 2:
                    shape = affinity.scale(shape, 1, -1, origin=(0, y0 - h * px / 2))
                shape = affinity.translate(shape, tx * px, -ty * px)
                feature = ogr.Feature(dst.GetLayerDefn())
                feature.SetField("class", name)
                feature.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(shape, output_dimension=2)))
                dst.CreateFeature(feature)
    dst_ds.CommitTransaction()
    dst = dst_ds = src = src_ds = None
    return out


def _peak_mb(args: list[str]) -> tuple[int, float]:
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True, check=True)
    code, kb = result.stdout.split()
    return int(code), int(kb) / 1024


def speed(scene: Path, layer: Path, folder: Path, repeats: int) -> dict:
    loaded = load_codec("lite", device="cpu")
    maps = [str(layer)]
    pixels = gdal.Open(str(scene)).RasterXSize * gdal.Open(str(scene)).RasterYSize
    encode_times, decode_times = [], []
    for i in range(repeats):
        report = encode_raster(scene, folder / "speed.magc", maps, codec=loaded)
        encode_times.append(report.seconds)
        start = time.perf_counter()
        decode_raster(folder / "speed.magc", folder / "speed.tif", maps, codec=loaded)
        decode_times.append(time.perf_counter() - start)
    jp2 = encode_baseline(scene, folder / "speed.jp2", "jp2", report.bpp)
    jp2_decode = [decode_seconds(folder / "speed.jp2") for _ in range(repeats)]
    return {
        "raster": f"{scene.name} ({pixels / 1e6:.2f} Mpx, RGB, with its land-cover GeoPackage)",
        "rate": report.rate, "bpp": report.bpp,
        "encode_seconds_median": statistics.median(encode_times), "decode_seconds_median": statistics.median(decode_times),
        "encode_megapixels_per_second": pixels / 1e6 / statistics.median(encode_times),
        "decode_megapixels_per_second": pixels / 1e6 / statistics.median(decode_times),
        "runs": repeats, "encode_seconds": encode_times, "decode_seconds": decode_times,
        "jpeg2000": {"bpp": jp2.bpp, "encode_seconds": jp2.encode_seconds, "decode_seconds_median": statistics.median(jp2_decode),
                     "encode_megapixels_per_second": pixels / 1e6 / jp2.encode_seconds,
                     "decode_megapixels_per_second": pixels / 1e6 / statistics.median(jp2_decode)},
    }


def memory(scene: Path, layer: Path, folder: Path, sizes: list[int]) -> list[dict]:
    rows = []
    for size in sizes:
        raster, big_layer = mirrored_raster(scene, layer, size, folder)
        coded, decoded = folder / f"mirror_{size}.magc", folder / f"mirror_{size}.out.tif"
        cli = [sys.executable, "-m", "magc.cli"]
        start = time.perf_counter()
        code_e, encode_mb = _peak_mb(cli + ["encode", str(raster), "-o", str(coded), "--map", str(big_layer), "--device", "cpu", "-q"])
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        code_d, decode_mb = _peak_mb(cli + ["decode", str(coded), "-o", str(decoded), "--map", str(big_layer), "--device", "cpu", "-q"])
        decode_s = time.perf_counter() - start
        rows.append({"size": f"{size}x{size}", "megapixels": size * size / 1e6, "encode_exit": code_e, "decode_exit": code_d,
                     "encode_peak_mb": round(encode_mb, 1), "decode_peak_mb": round(decode_mb, 1),
                     "encode_seconds": round(encode_s, 1), "decode_seconds": round(decode_s, 1),
                     "bpp": 8 * coded.stat().st_size / (size * size) if coded.exists() else None})
        for path in (raster, coded, decoded):
            path.unlink(missing_ok=True)
    return rows


def run_bench(output: Path, shared_data: Path, sizes: list[int], repeats: int = 5) -> dict:
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp_name:
        folder = Path(tmp_name)
        scene, layer = _scene(shared_data, folder)
        result = {
            "command": " ".join(["magc"] + sys.argv[1:]),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "device": "cpu", "torch": torch.__version__,
                        "gdal": gdal.__version__},
            "speed": speed(scene, layer, folder, repeats),
            "memory": memory(scene, layer, folder, sizes),
        }
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, output)
    print(json.dumps({k: result[k] for k in ("speed", "memory")}, indent=1))
    return result
