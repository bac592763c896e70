"""Compare with the original: metrics and a difference raster, for the Compare panel.

The difference is the mean absolute difference over bands, in the original's units,
written window by window (never the whole raster in memory) under a temporary name and
renamed when complete. Nodata of the original stays nodata (-1).
"""
from __future__ import annotations

import math
import os
import uuid
from typing import Callable

import numpy as np
from osgeo import gdal
from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from .base import MagcAlgorithm
from .postprocess import ResultStyler
from .roundtrip import segmentation_scores
from .runner import library_call, require_library
from .snapshot import raster_snapshot

ROWS = 256
NODATA = -1.0


def _valid(block: np.ndarray, nodata: float | None) -> np.ndarray:
    return np.ones(block.shape[1:], bool) if nodata is None else ~np.all(block == nodata, axis=0)


def write_difference(original: str, reconstruction: str, output: str, cancel: Callable[[], bool] = lambda: False) -> float:
    """Write |original - reconstruction| (band mean) as Float32 GeoTIFF; returns its 98th percentile."""
    a, b = gdal.Open(original), gdal.Open(reconstruction)
    if (a.RasterXSize, a.RasterYSize) != (b.RasterXSize, b.RasterYSize):
        raise QgsProcessingException(
            f"the rasters differ in size ({a.RasterXSize}x{a.RasterYSize} vs {b.RasterXSize}x{b.RasterYSize}): "
            "choose the reconstruction of this original")
    bands = min(a.RasterCount, b.RasterCount)
    nodata = a.GetRasterBand(1).GetNoDataValue()
    tmp = os.path.join(os.path.dirname(os.path.abspath(output)), f".{os.path.basename(output)}.{uuid.uuid4().hex[:8]}.partial.tif")
    driver = gdal.GetDriverByName("GTiff")
    out = driver.Create(tmp, a.RasterXSize, a.RasterYSize, 1, gdal.GDT_Float32, ["COMPRESS=DEFLATE", "TILED=YES"])
    samples = []
    try:
        out.SetGeoTransform(a.GetGeoTransform())
        out.SetProjection(a.GetProjection())
        band = out.GetRasterBand(1)
        band.SetNoDataValue(NODATA)
        for y0 in range(0, a.RasterYSize, ROWS):
            if cancel():
                raise QgsProcessingException("Comparison cancelled; no difference file was left")
            h = min(ROWS, a.RasterYSize - y0)
            pa = a.ReadAsArray(0, y0, a.RasterXSize, h, band_list=list(range(1, bands + 1))).astype(np.float32)
            pb = b.ReadAsArray(0, y0, a.RasterXSize, h, band_list=list(range(1, bands + 1))).astype(np.float32)
            pa, pb = pa.reshape(bands, h, -1), pb.reshape(bands, h, -1)
            diff = np.abs(pa - pb).mean(axis=0)
            valid = _valid(pa, nodata)
            diff[~valid] = NODATA
            band.WriteArray(diff, 0, y0)
            samples.append(diff[valid][:: max(1, diff.size // 4096)])
        band = None
        out = None
        os.replace(tmp, output)
    finally:
        out = None
        if os.path.exists(tmp):
            os.remove(tmp)
    values = np.concatenate(samples) if samples else np.zeros(1)
    return float(np.percentile(values, 98)) if values.size else 0.0


class CompareAlgorithm(MagcAlgorithm):
    NAME = "compare"
    DISPLAY = "Compare with the original"
    HELP = ("Measures a reconstruction against its original (PSNR, MS-SSIM, and mIoU of land-cover segmentation "
            "when a segmentation model is installed; bits per pixel from the .magc file when given) and writes a "
            "difference raster. This is what Raster > MAGC > Compare… runs in the background.")
    ORIGINAL, RECONSTRUCTION, FILE, DIFFERENCE = "ORIGINAL", "RECONSTRUCTION", "MAGC_FILE", "DIFFERENCE"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.ORIGINAL, "Original"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.RECONSTRUCTION, "Reconstruction"))
        self.addParameter(QgsProcessingParameterFile(self.FILE, "MAGC file (for bits per pixel)",
                                                     fileFilter="MAGC files (*.magc)", optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.DIFFERENCE, "Difference"))
        for name, text in (("BPP", "Bits per pixel (NaN without a MAGC file)"), ("PSNR", "PSNR (dB)"),
                           ("MS_SSIM", "MS-SSIM"), ("MIOU", "mIoU vs the original (NaN: no segmentation model)"),
                           ("DIFFERENCE_P98", "98th percentile of the difference")):
            self.addOutput(QgsProcessingOutputNumber(name, text))

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.original = raster_snapshot(self.parameterAsRasterLayer(parameters, self.ORIGINAL, context), "original")
        self.reconstruction = raster_snapshot(
            self.parameterAsRasterLayer(parameters, self.RECONSTRUCTION, context), "reconstruction")
        self.file = self.parameterAsFile(parameters, self.FILE, context)
        self.difference = self.parameterAsOutputLayer(parameters, self.DIFFERENCE, context)
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        require_library()
        from magc.api import read_info
        from magc.metrics import compare_rasters

        bpp = math.nan
        if self.file:
            with library_call(feedback, "Reading the MAGC file"):
                bpp = read_info(self.file)["bpp"]
        feedback.setProgressText("difference raster")
        p98 = write_difference(self.original.path, self.reconstruction.path, self.difference, feedback.isCanceled)
        feedback.setProgress(30)
        feedback.setProgressText("PSNR and MS-SSIM")
        with library_call(feedback, "Comparison"):
            quality = compare_rasters(self.original.path, self.reconstruction.path)
        feedback.setProgress(60)
        feedback.setProgressText("land-cover segmentation (mIoU)")
        with library_call(feedback, "Segmentation"):
            segmentation = segmentation_scores(self.original.path, self.reconstruction.path)
        miou = segmentation["miou_vs_original"] if segmentation else math.nan
        self.report(feedback, {"Bits per pixel": f"{bpp:.4f}", "PSNR": f"{quality['psnr']:.2f} dB",
                               "MS-SSIM": f"{quality['ms_ssim']:.4f}",
                               "mIoU": f"{miou:.3f}" if segmentation else "no segmentation model installed"})
        ResultStyler.attach(context, self.difference, difference_max=p98)
        return {self.DIFFERENCE: self.difference, "BPP": bpp, "PSNR": quality["psnr"], "MS_SSIM": quality["ms_ssim"],
                "MIOU": miou, "DIFFERENCE_P98": p98}
