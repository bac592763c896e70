"""Baseline at matched bitrate: what a QGIS user can do today (JPEG 2000 through GDAL).

The target bpp is given directly or read from a .magc file, so the baseline is made at the
same (or a slightly higher) bitrate as MAGC; its PSNR / MS-SSIM against the original are
reported for a fair comparison.
"""
from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)

from . import params
from .base import MagcAlgorithm
from .runner import library_call, require_library
from .snapshot import raster_snapshot

EXTENSIONS = {"jp2": ".jp2", "webp": ".webp", "jpeg": ".jpg"}


class BaselineAlgorithm(MagcAlgorithm):
    NAME = "baseline"
    DISPLAY = "Baseline at matched bitrate"
    HELP = ("Encodes the raster with a standard codec through GDAL at the bitrate of a MAGC file (or a given bpp), "
            "for comparison: JPEG 2000 reaches 0.01-0.05 bpp; WebP and JPEG stop at their lowest quality and say "
            "so (REACHED = 0). Reports PSNR and MS-SSIM against the original.")
    INPUT, BPP, MATCH, CODEC, OUTPUT = "INPUT", "BPP", "MATCH_FILE", "CODEC", "OUTPUT"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer (the original)"))
        self.addParameter(QgsProcessingParameterFile(self.MATCH, "Match the bitrate of this MAGC file",
                                                     fileFilter="MAGC files (*.magc)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.BPP, "…or this target bits per pixel",
                                                       QgsProcessingParameterNumber.Double, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterEnum(self.CODEC, "Codec", options=list(EXTENSIONS), defaultValue="jp2",
                                                     usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, "Baseline raster", "JPEG 2000 (*.jp2);;WebP (*.webp);;JPEG (*.jpg *.jpeg)"))
        for name, text in (("BPP_REACHED", "Bits per pixel of the baseline"), ("BYTES", "File size (bytes)"),
                           ("REACHED", "1 if the target bitrate was met"), ("PSNR", "PSNR (dB)"), ("MS_SSIM", "MS-SSIM")):
            self.addOutput(QgsProcessingOutputNumber(name, text))

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.raster = raster_snapshot(self.parameterAsRasterLayer(parameters, self.INPUT, context))
        self.match = self.parameterAsFile(parameters, self.MATCH, context)
        self.bpp = params.optional_number(self, parameters, self.BPP, context)
        self.codec = self.parameterAsEnumString(parameters, self.CODEC, context) or "jp2"
        self.output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if os.path.splitext(self.output)[1].lower() not in (EXTENSIONS[self.codec], ".jpeg" if self.codec == "jpeg" else ""):
            self.output = os.path.splitext(self.output)[0] + EXTENSIONS[self.codec]
        if self.match and self.bpp is not None:
            raise QgsProcessingException("give a MAGC file to match or a target bpp, not both")
        if self.codec == "jp2" and not self.match and self.bpp is None:
            raise QgsProcessingException("JPEG 2000 needs a target: choose a MAGC file to match or a bpp")
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        require_library()
        from magc.api import read_info
        from magc.baselines import encode_baseline
        from magc.metrics import compare_rasters

        target = self.bpp
        if self.match:
            with library_call(feedback, "Reading the MAGC file"):
                target = read_info(self.match)["bpp"]
            feedback.pushInfo(f"Target: {target:.4f} bpp (from {self.match})")
        feedback.setProgressText(f"encoding with {self.codec}")
        with library_call(feedback, "Baseline"):
            result = encode_baseline(self.raster.path, self.output, self.codec, target)
        if feedback.isCanceled():
            os.remove(result.path)
            raise QgsProcessingException("Baseline cancelled; the file was removed")
        feedback.setProgress(60)
        feedback.setProgressText("measuring PSNR and MS-SSIM")
        quality = compare_rasters(self.raster.path, result.path)
        self.report(feedback, {"Written": result.path, "Bits per pixel": f"{result.bpp:.4f}",
                               "Target reached": result.reached, "PSNR": f"{quality['psnr']:.2f} dB",
                               "MS-SSIM": f"{quality['ms_ssim']:.4f}"})
        self.load_on_completion(context, result.path, f"{self.raster.name} ({self.codec} {result.bpp:.3f} bpp)", self.OUTPUT,
                                self.raster.style_xml)
        return {self.OUTPUT: result.path, "BPP_REACHED": result.bpp, "BYTES": result.bytes,
                "REACHED": int(result.reached), "PSNR": quality["psnr"], "MS_SSIM": quality["ms_ssim"]}
