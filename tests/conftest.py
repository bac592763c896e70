"""Shared fixtures: paths to ../shared/data (skipped with a clear message where absent) and
small codecs with random weights (the tiny presets) that run in seconds on a CPU."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = SHARED_DATA / "fixtures"

os.environ.setdefault("XDG_DATA_HOME", str(REPO / ".pytest_cache" / "xdg-data"))


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests read ../shared/data beside the project checkout")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return need(FIXTURES)


@pytest.fixture(scope="session")
def tiny_lite():
    from magc.models.loading import load_codec

    return load_codec("tiny-lite", allow_untrained=True, device="cpu")


@pytest.fixture(scope="session")
def tiny_sd21():
    from magc.models.loading import load_codec

    return load_codec("tiny-sd21", allow_untrained=True, device="cpu")


def write_geotiff(path: Path, array: np.ndarray, epsg: int | None = 32640, nodata: float | None = None,
                  origin: tuple[float, float] = (500000.0, 2800000.0), pixel: float = 1.0,
                  alpha: bool = False) -> Path:
    """A small GeoTIFF for tests: array (bands, H, W) uint8/uint16."""
    array = array if array.ndim == 3 else array[None]
    dtype = gdal.GDT_Byte if array.dtype == np.uint8 else gdal.GDT_UInt16
    ds = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[2], array.shape[1], array.shape[0], dtype)
    ds.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    if epsg:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    for b in range(array.shape[0]):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(array[b])
        if nodata is not None and not (alpha and b == array.shape[0] - 1):
            band.SetNoDataValue(nodata)
    if alpha:
        ds.GetRasterBand(array.shape[0]).SetColorInterpretation(gdal.GCI_AlphaBand)
    ds = None
    return path


def smooth_image(height: int, width: int, bands: int = 3, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """A deterministic textured test image (gradients plus blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = []
    for b in range(bands):
        f = rng.uniform(2, 8, 2)
        img = 0.5 + 0.25 * np.sin(2 * np.pi * f[0] * xx + b) * np.cos(2 * np.pi * f[1] * yy) + 0.1 * rng.standard_normal((height, width))
        out.append(np.clip(img, 0, 1))
    peak = 255 if dtype == np.uint8 else 4000
    return (np.stack(out) * peak).astype(dtype)
