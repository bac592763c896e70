"""What a QGIS user can do today: JPEG 2000, WebP and JPEG through GDAL, at a given bitrate.

* JPEG 2000 (JP2OpenJPEG) is the only GDAL codec that reaches 0.01-0.05 bpp. Its ``QUALITY``
  is a percentage of the uncompressed size, so a target of b bpp starts at ``100 * b /
  (bands * bits)``; a short bisection then finds the lowest quality whose *file* reaches the
  target (within 3 % when it can), so comparisons are at the same or a higher bpp for the
  baseline. ``reached`` is False only when even the lowest setting lands under the target. The file keeps its georeferencing in the compact GeoJP2 box; the GML
  box (about 2 KB of XML, more than the whole image at 0.02 bpp) is left out.
* WebP and JPEG go no lower than their lowest quality setting; ``encode_baseline`` reports
  the bpp they reach and ``reached`` = False when that is above the target, instead of
  pretending.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from osgeo import gdal

from .errors import InputError, UsageError
from .raster import RasterReader

gdal.UseExceptions()

LOWEST_QUALITY = {"webp": 1, "jpeg": 10}  # GDAL's JPEG driver refuses QUALITY below 10
CODECS = {
    "jp2": ("JP2OpenJPEG", ".jp2"),
    "webp": ("WEBP", ".webp"),
    "jpeg": ("JPEG", ".jpg"),
}


@dataclass
class BaselineResult:
    codec: str
    path: str
    target_bpp: float | None
    bpp: float
    bytes: int
    reached: bool
    quality: float
    encode_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _translate(source: gdal.Dataset, path: Path, driver: str, options: list[str]) -> float:
    start = time.perf_counter()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        gdal.Translate(str(tmp), source, format=driver, creationOptions=options)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        aux = Path(str(tmp) + ".aux.xml")
        if aux.exists():
            aux.unlink()
    return time.perf_counter() - start


def _bpp(path: Path, pixels: int) -> tuple[float, int]:
    size = path.stat().st_size
    return 8 * size / pixels, size


def encode_baseline(input_path: str | Path, output_path: str | Path, codec: str = "jp2", bpp: float | None = None) -> BaselineResult:
    """Encode with a GDAL codec; for JPEG 2000 at (at least) ``bpp``, for WebP/JPEG at their lowest quality."""
    if codec not in CODECS:
        raise UsageError(f"unknown baseline {codec!r}; choose from {', '.join(CODECS)}")
    reader = RasterReader(input_path, compute_ranges=False)
    info = reader.info
    source = reader.dataset
    pixels = info.width * info.height
    driver, _ = CODECS[codec]
    output_path = Path(output_path)
    if codec in ("webp", "jpeg") and (info.dtype != "uint8" or info.bands not in ((1, 3) if codec == "jpeg" else (3, 4))):
        raise InputError(f"{codec.upper()} cannot store {info.bands} band(s) of {info.dtype}")
    if codec == "jp2":
        if bpp is None:
            raise UsageError("JPEG 2000 needs a target bpp")
        raw_bits = info.bands * (8 if info.dtype == "uint8" else 16)
        low, high = None, None  # qualities known to land below / at-or-above the target
        quality = 100.0 * bpp / raw_bits
        results: dict[float, tuple[float, float]] = {}
        for _ in range(10):
            options = [f"QUALITY={quality:.6f}", "REVERSIBLE=NO", "GMLJP2=NO", "GeoJP2=YES"] + (["YCC=YES"] if info.bands >= 3 else [])
            seconds = _translate(source, output_path, driver, options)
            achieved, _ = _bpp(output_path, pixels)
            results[quality] = (achieved, seconds)
            if achieved >= bpp:
                high = quality if high is None else min(high, quality)
            else:
                low = quality if low is None else max(low, quality)
            if high is not None and results[high][0] <= bpp * 1.03:
                break
            quality = (low + high) / 2 if low is not None and high is not None else (quality * 1.5 if high is None else quality / 1.5)
        quality = high if high is not None else max(results)
        options = [f"QUALITY={quality:.6f}", "REVERSIBLE=NO", "GMLJP2=NO", "GeoJP2=YES"] + (["YCC=YES"] if info.bands >= 3 else [])
        seconds = _translate(source, output_path, driver, options)
        achieved, size = _bpp(output_path, pixels)
        return BaselineResult("jp2", str(output_path), bpp, achieved, size, achieved >= bpp, quality, seconds)
    quality = LOWEST_QUALITY[codec]
    seconds = _translate(source, output_path, driver, [f"QUALITY={quality}"])
    achieved, size = _bpp(output_path, pixels)
    return BaselineResult(codec, str(output_path), bpp, achieved, size, bpp is None or achieved <= bpp, quality, seconds)


def decode_seconds(path: str | Path) -> float:
    """Time to decode a GDAL-readable file completely (for the benchmark)."""
    start = time.perf_counter()
    dataset = gdal.Open(str(path))
    for b in range(dataset.RasterCount):
        dataset.GetRasterBand(b + 1).ReadAsArray()
    return time.perf_counter() - start
