"""Encode raster: one raster layer (and its map layers) into a .magc file."""
from __future__ import annotations

from qgis.core import (
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
)

from . import params
from .base import MagcAlgorithm
from .runner import FeedbackBridge, library_call, codec_for, require_library
from .snapshot import raster_snapshot


class EncodeRasterAlgorithm(MagcAlgorithm):
    NAME = "encode_raster"
    DISPLAY = "Encode raster"
    HELP = ("Compresses a georeferenced raster (8 or 16 bit) into a .magc file at 0.01-0.1 bits per pixel. "
            "The map layers (buildings, roads, water, vegetation) guide the decoder and cost no bits, but the "
            "same layers are needed to decompress. Give a rate index or a target bpp, not both.")
    INPUT, OUTPUT = "INPUT", "OUTPUT"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer"))
        params.add_map_parameters(self)
        params.add_model_parameters(self)
        embed = QgsProcessingParameterBoolean(params.EMBED_MAP, "Store the map in the file (decodes without map layers; costs bits)",
                                              defaultValue=False)
        embed.setFlags(embed.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(embed)
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Compressed file", "MAGC files (*.magc)"))
        for name, text in (("BPP", "Bits per pixel"), ("BYTES", "File size (bytes)"), ("RATE_USED", "Rate index used")):
            self.addOutput(QgsProcessingOutputNumber(name, text))
        self.addOutput(QgsProcessingOutputString("DEVICE_USED", "Device used"))
        self.addOutput(QgsProcessingOutputString("MAP_FINGERPRINT", "Fingerprint of the map (hex)"))

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.raster = raster_snapshot(self.parameterAsRasterLayer(parameters, self.INPUT, context))
        self.maps = self.snapshot_maps(parameters, context)
        self.output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        self.options = params.encode_options(self, parameters, context)
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        require_library()
        from magc.api import encode_raster, read_info

        bridge = FeedbackBridge(feedback)
        options = {k: self.options[k] for k in ("rate", "bpp", "embed_map") if k in self.options}
        with codec_for(self.options, feedback) as loaded, library_call(feedback, "Encoding"):
            report = encode_raster(self.raster.path, self.output, self.maps, codec=loaded, **options, **bridge.callbacks())
        with library_call(feedback, "Reading back the file"):
            fingerprint = read_info(report.output)["map_fingerprint"]
        self.report(feedback, {
            "Written": report.output, "Size": f"{report.file_bytes} bytes",
            "Bits per pixel": f"{report.bpp:.4f} ({report.bpp_without_map:.4f} without the embedded map)",
            "Rate": report.rate, "Tiles": f"{report.tiles} ({report.skipped_tiles} all nodata)",
            "Time": f"{report.seconds:.1f} s",
        })
        return {self.OUTPUT: report.output, "BPP": report.bpp, "BYTES": report.file_bytes,
                "RATE_USED": report.rate, "DEVICE_USED": report.device, "MAP_FINGERPRINT": fingerprint}
