"""Batch encode: many raster layers and/or a folder of rasters in one background run.

The 3.22 batch dialog runs each row on the UI thread (a GPU batch from there freezes QGIS),
so batches are one algorithm run: the model is loaded once and each raster is one step of
the progress bar. A cancel stops after removing the file in progress; files already
finished are complete and are kept (the log lists them).
"""
from __future__ import annotations

import csv
import fnmatch
import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterString,
)

from . import params
from .base import MagcAlgorithm
from .runner import FeedbackBridge, library_call, codec_for, require_library
from .snapshot import raster_snapshot


def folder_rasters(folder: str, patterns: str) -> list[str]:
    """Files in ``folder`` (not recursive) matching any of the ';'-separated patterns."""
    if not folder:
        return []
    if not os.path.isdir(folder):
        raise QgsProcessingException(f"input folder does not exist: {folder}")
    wanted = [p.strip().lower() for p in (patterns or "*.tif;*.tiff").split(";") if p.strip()]
    names = sorted(n for n in os.listdir(folder) if any(fnmatch.fnmatch(n.lower(), p) for p in wanted))
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def output_names(inputs: list[str], folder: str) -> list[str]:
    """``NAME.magc`` per input; a repeated name gets ``_2``, ``_3``... (never overwrite a sibling)."""
    seen: dict[str, int] = {}
    out = []
    for path in inputs:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        out.append(os.path.join(folder, f"{stem}.magc" if seen[stem] == 1 else f"{stem}_{seen[stem]}.magc"))
    return out


class BatchEncodeAlgorithm(MagcAlgorithm):
    NAME = "batch_encode"
    DISPLAY = "Batch encode"
    HELP = ("Compresses many rasters in one background run (raster layers and/or every matching file of a folder) "
            "with the same model and settings; the model is loaded once. The map layers are used for each raster "
            "they overlap. Writes NAME.magc per raster and summary.csv in the output folder.")
    INPUTS, FOLDER, PATTERN, OUTPUT_FOLDER = "INPUTS", "FOLDER", "PATTERN", "OUTPUT_FOLDER"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUTS, "Raster layers", QgsProcessing.TypeRaster,
                                                               optional=True))
        self.addParameter(QgsProcessingParameterFile(self.FOLDER, "…and/or all rasters in this folder",
                                                     QgsProcessingParameterFile.Folder, optional=True))
        self.addParameter(QgsProcessingParameterString(self.PATTERN, "File patterns in the folder (';'-separated)",
                                                       defaultValue="*.tif;*.tiff", optional=True))
        params.add_map_parameters(self)
        params.add_model_parameters(self)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Output folder"))
        self.addOutput(QgsProcessingOutputNumber("COUNT", "Files written"))
        self.addOutput(QgsProcessingOutputFile("SUMMARY", "Summary (CSV)"))

    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layers = self.parameterAsLayerList(parameters, self.INPUTS, context)
        self.inputs = [raster_snapshot(layer).path for layer in layers]
        self.inputs += folder_rasters(self.parameterAsFile(parameters, self.FOLDER, context),
                                      self.parameterAsString(parameters, self.PATTERN, context))
        if not self.inputs:
            raise QgsProcessingException("nothing to encode: choose raster layers or a folder with rasters")
        self.maps = self.snapshot_maps(parameters, context)
        self.folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        self.options = params.encode_options(self, parameters, context)
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        require_library()
        os.makedirs(self.folder, exist_ok=True)
        with codec_for(self.options, feedback) as loaded:
            rows = self._encode_all(loaded, feedback)
        summary = os.path.join(self.folder, "summary.csv")
        with open(summary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return {self.OUTPUT_FOLDER: self.folder, "COUNT": len(rows), "SUMMARY": summary}

    def _encode_all(self, loaded, feedback) -> list[dict]:
        from magc.api import encode_raster

        rows: list[dict] = []
        count = len(self.inputs)
        for i, (source, target) in enumerate(zip(self.inputs, output_names(self.inputs, self.folder))):
            feedback.pushInfo(f"[{i + 1}/{count}] {source}")
            bridge = FeedbackBridge(feedback, (i / count, (i + 1) / count))
            try:
                with library_call(feedback, f"Encoding {os.path.basename(source)}"):
                    report = encode_raster(source, target, self.maps, codec=loaded, rate=self.options["rate"],
                                           bpp=self.options["bpp"], **bridge.callbacks())
            except QgsProcessingException:
                if feedback.isCanceled():
                    feedback.pushInfo(f"Cancelled; the {len(rows)} finished file(s) are kept in {self.folder}")
                raise
            rows.append({"input": source, "output": report.output, "bytes": report.file_bytes, "bpp": report.bpp,
                         "rate": report.rate, "seconds": round(report.seconds, 2)})
            feedback.pushInfo(f"    {report.file_bytes} bytes, {report.bpp:.4f} bpp")
        return rows
