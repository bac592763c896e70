"""Decode file: a .magc file (and the same map layers) back into a georeferenced GeoTIFF."""
from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..layers import style_of
from . import params
from .base import MagcAlgorithm
from .postprocess import ResultStyler
from .runner import FeedbackBridge, library_call, codec_for, require_library


class DecodeFileAlgorithm(MagcAlgorithm):
    NAME = "decode_file"
    DISPLAY = "Decode file"
    HELP = ("Reconstructs a GeoTIFF (same size, bands, data type, georeferencing and nodata as the original) from a "
            ".magc file. Give the map layers and class assignments used when compressing, unless the map was "
            "stored in the file; a different map is refused unless you allow it. Sampling strength (advanced): "
            "empty uses the model's; 0 decodes without the diffusion model (fastest); 1 generates from pure noise.")
    INPUT, OUTPUT, STYLE_LAYER, IGNORE, STRENGTH = "INPUT", "OUTPUT", "STYLE_LAYER", "IGNORE_MAP_MISMATCH", "STRENGTH"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(self.INPUT, "MAGC file", fileFilter="MAGC files (*.magc)"))
        params.add_map_parameters(self)
        params.add_model_parameters(self, with_preset=False)
        ignore = QgsProcessingParameterBoolean(self.IGNORE, "Decode even if the map differs (the result will differ)",
                                               defaultValue=False)
        style = QgsProcessingParameterRasterLayer(self.STYLE_LAYER, "Copy the style of this layer (the original)",
                                                  optional=True)
        strength = QgsProcessingParameterNumber(self.STRENGTH, "Sampling strength (empty: the model's)",
                                                QgsProcessingParameterNumber.Double, optional=True, minValue=0.0, maxValue=1.0)
        for parameter in (ignore, style, strength):
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Reconstruction"))

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.input = self.parameterAsFile(parameters, self.INPUT, context)
        if not self.input:
            raise QgsProcessingException("choose a .magc file to decode")
        self.maps = self.snapshot_maps(parameters, context)
        self.output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        self.options = params.model_options(self, parameters, context)
        self.ignore = self.parameterAsBool(parameters, self.IGNORE, context)
        given = parameters.get(self.STRENGTH)
        self.strength = None if given is None or given == "" else self.parameterAsDouble(parameters, self.STRENGTH, context)
        self.style_xml = style_of(self.parameterAsRasterLayer(parameters, self.STYLE_LAYER, context))
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        require_library()
        from magc.api import decode_raster, read_info

        with library_call(feedback, "Reading the file"):
            header = read_info(self.input)
        # a file says which model made it; untrained weights decode what they encoded
        options = {**self.options, "allow_untrained": True}
        with codec_for(options, feedback, header["preset"]) as loaded, library_call(feedback, "Decoding"):
            report = decode_raster(self.input, self.output, self.maps, codec=loaded, ignore_map_mismatch=self.ignore,
                                   strength=self.strength, **FeedbackBridge(feedback).callbacks())
        self.report(feedback, {"Written": report.output, "Size": f"{report.width} x {report.height}",
                               "Map checked": report.map_checked, "Sampling strength": report.strength,
                               "Time": f"{report.seconds:.1f} s"})
        ResultStyler.attach(context, self.output, self.style_xml)
        return {self.OUTPUT: report.output}
