"""Round trip and evaluate: encode, decode and measure, with the reconstruction as a layer."""
from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterRasterLayer,
)

from . import params
from .base import MagcAlgorithm
from .runner import FeedbackBridge, library_call, codec_for, require_library
from .snapshot import raster_snapshot

METRICS = (("BPP", "Bits per pixel"), ("PSNR", "PSNR (dB)"), ("MS_SSIM", "MS-SSIM"),
           ("MIOU", "mIoU of land-cover segmentation vs the original (NaN: no segmentation model)"))


def segmentation_scores(original: str, reconstruction: str) -> dict | None:
    """mIoU when the library has a segmentation model installed; None otherwise."""
    try:
        from magc.segmentation import compare_segmentations
    except ImportError:
        return None
    from ..paths import embedded_weights_dir

    packaged = embedded_weights_dir() / "segmentation.safetensors"
    try:
        return compare_segmentations(original, reconstruction, weights=packaged if packaged.is_file() else None)
    except TypeError:  # an older library without the weights argument
        return compare_segmentations(original, reconstruction)


class RoundTripAlgorithm(MagcAlgorithm):
    NAME = "roundtrip"
    DISPLAY = "Round trip and evaluate"
    HELP = ("Compresses a raster, decompresses it and measures what was kept: bits per pixel, PSNR, MS-SSIM and, "
            "when a segmentation model is installed, the mIoU of land-cover classes. Writes NAME.magc, "
            "NAME.magc.tif and NAME.json (the full report) in the output folder and loads the reconstruction.")
    INPUT, OUTPUT_FOLDER, OUTPUT = "INPUT", "OUTPUT_FOLDER", "OUTPUT"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer"))
        params.add_map_parameters(self)
        params.add_model_parameters(self)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.OUTPUT, "Reconstruction"))
        self.addOutput(QgsProcessingOutputFile("FILE", "Compressed file"))
        self.addOutput(QgsProcessingOutputFile("REPORT", "Report (JSON)"))
        for name, text in METRICS:
            self.addOutput(QgsProcessingOutputNumber(name, text))

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.raster = raster_snapshot(self.parameterAsRasterLayer(parameters, self.INPUT, context))
        self.maps = self.snapshot_maps(parameters, context)
        self.folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        self.options = params.encode_options(self, parameters, context)
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        require_library()
        from magc.api import roundtrip

        os.makedirs(self.folder, exist_ok=True)
        with codec_for(self.options, feedback) as loaded, library_call(feedback, "Round trip"):
            report = roundtrip(self.raster.path, self.folder, self.maps, codec=loaded, rate=self.options["rate"],
                               bpp=self.options["bpp"], **FeedbackBridge(feedback, (0.0, 0.9)).callbacks())
        feedback.setProgressText("segmenting original and reconstruction (mIoU)")
        with library_call(feedback, "Segmentation"):
            segmentation = segmentation_scores(self.raster.path, report["reconstruction"])
        miou = segmentation["miou_vs_original"] if segmentation else float("nan")
        self.report(feedback, {"Bits per pixel": f"{report['bpp']:.4f}", "PSNR": f"{report['psnr']:.2f} dB",
                               "MS-SSIM": f"{report['ms_ssim']:.4f}",
                               "mIoU": f"{miou:.3f}" if segmentation else "no segmentation model installed"})
        self.load_on_completion(context, report["reconstruction"], f"{self.raster.name} (MAGC)", self.OUTPUT,
                                self.raster.style_xml)
        return {self.OUTPUT: report["reconstruction"], "FILE": report["file"],
                "REPORT": os.path.join(self.folder, os.path.splitext(os.path.basename(report["file"]))[0] + ".json"),
                "BPP": report["bpp"], "PSNR": report["psnr"], "MS_SSIM": report["ms_ssim"], "MIOU": miou}
