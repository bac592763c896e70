"""Compare…: a panel with the swipe tool, the difference layer and the metrics.

"Measure" runs ``magc:compare`` in the background (PSNR, MS-SSIM, mIoU when a
segmentation model is installed, bpp from the .magc file) and adds the difference raster to
the "MAGC reconstructions" group; "Swipe" turns on the swipe tool between the two layers.
"""
from __future__ import annotations

import math
import os

from qgis.core import Qgis, QgsMapLayerProxyModel, QgsProcessingUtils, QgsProject, QgsProviderRegistry
from qgis.gui import QgsDockWidget, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..layers import add_difference
from .swipe import SwipeItem, SwipeTool
from .tasks import AlgorithmRun, keep_running

METRICS = (("BPP", "Bits per pixel", "{:.4f}"), ("PSNR", "PSNR (dB)", "{:.2f}"), ("MS_SSIM", "MS-SSIM", "{:.4f}"),
           ("MIOU", "mIoU (land cover)", "{:.3f}"), ("DIFFERENCE_P98", "Difference, 98th percentile", "{:.3g}"))
MISSING = {"BPP": "— (no .magc file)", "MIOU": "— (no segmentation model)"}


def guess_magc_file(layer) -> str:
    """``x.magc`` for a reconstruction ``x.magc.tif`` (or ``x.tif`` beside an ``x.magc``)."""
    if layer is None:
        return ""
    path = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source()).get("path") or ""
    for candidate in (os.path.splitext(path)[0], os.path.splitext(path)[0] + ".magc"):
        if candidate.endswith(".magc") and os.path.isfile(candidate):
            return candidate
    return ""


class CompareDock(QgsDockWidget):
    def __init__(self, iface, parent: QWidget | None = None) -> None:
        super().__init__("MAGC comparison", parent or (iface.mainWindow() if iface else None))
        self.setObjectName("MagcCompareDock")
        self.setMinimumWidth(360)
        self.iface = iface
        self.canvas = iface.mapCanvas()
        self.original, self.reconstruction = QgsMapLayerComboBox(), QgsMapLayerComboBox()
        for combo in (self.original, self.reconstruction):
            combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.file = QgsFileWidget()
        self.file.setFilter("MAGC files (*.magc)")
        self.measure = QPushButton("Measure")
        self.swipe = QPushButton("Swipe")
        self.swipe.setCheckable(True)
        self.table = QTableWidget(len(METRICS), 2)
        self.table.setHorizontalHeaderLabels(["Metric", "Value"])
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        self.table.setWordWrap(True)
        for row, (_, label, _) in enumerate(METRICS):
            self.table.setItem(row, 0, QTableWidgetItem(label))
            self.table.setItem(row, 1, QTableWidgetItem(""))
        self._layout()
        self.reconstruction.layerChanged.connect(lambda layer: self.file.setFilePath(guess_magc_file(layer)))
        self.measure.clicked.connect(self.start)
        self.swipe.toggled.connect(self.set_swipe)
        QgsProject.instance().layersWillBeRemoved.connect(self._layers_removed)
        self.item: SwipeItem | None = None
        self.tool: SwipeTool | None = None
        self.run: AlgorithmRun | None = None
        self.results: dict = {}

    def _layout(self) -> None:
        body = QWidget()
        form = QFormLayout()
        form.addRow("Original", self.original)
        form.addRow("Reconstruction", self.reconstruction)
        form.addRow("MAGC file", self.file)
        buttons = QHBoxLayout()
        buttons.addWidget(self.measure)
        buttons.addWidget(self.swipe)
        column = QVBoxLayout(body)
        column.addLayout(form)
        column.addLayout(buttons)
        column.addWidget(self.table)
        self.setWidget(body)

    def set_pair(self, original, reconstruction) -> None:
        self.original.setLayer(original)
        self.reconstruction.setLayer(reconstruction)

    # -- metrics -----------------------------------------------------------------------------
    def start(self) -> AlgorithmRun | None:
        original, reconstruction = self.original.currentLayer(), self.reconstruction.currentLayer()
        if original is None or reconstruction is None or original is reconstruction:
            self._message("Choose an original and its reconstruction.", Qgis.Warning)
            return None
        difference = os.path.join(QgsProcessingUtils.tempFolder(), f"difference_{reconstruction.id()[-8:]}.tif")
        parameters = {"ORIGINAL": original.id(), "RECONSTRUCTION": reconstruction.id(),
                      "MAGC_FILE": self.file.filePath() or None, "DIFFERENCE": difference}
        for row in range(len(METRICS)):
            self.table.item(row, 1).setText("…")
        self.measure.setEnabled(False)
        self.run = AlgorithmRun("magc:compare", parameters, f"MAGC: comparing {reconstruction.name()}",
                                self.iface.messageBar())
        self.run.finished.connect(lambda ok, results, error: self._finished(ok, results, error, reconstruction.name()))
        keep_running(self.run)
        self.run.start()
        return self.run

    def _finished(self, ok: bool, results: dict, error: str, name: str) -> None:
        if sip.isdeleted(self):  # the plugin was unloaded while the task ran
            return
        self.measure.setEnabled(True)
        if not ok:
            for row in range(len(METRICS)):
                self.table.item(row, 1).setText("")
            self._message(f"Comparison failed: {error}", Qgis.Critical)
            return
        self.results = results
        self.show_metrics(results)
        add_difference(results["DIFFERENCE"], f"{name} − original (difference)", results.get("DIFFERENCE_P98", 1.0))

    def show_metrics(self, results: dict) -> None:
        for row, (key, _, fmt) in enumerate(METRICS):
            value = results.get(key)
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            text = MISSING.get(key, "—") if missing else fmt.format(value)
            self.table.item(row, 1).setText(text)
            self.table.item(row, 1).setToolTip(text)
        self.table.resizeRowsToContents()

    # -- swipe -------------------------------------------------------------------------------
    def set_swipe(self, on: bool) -> None:
        if not on:
            self.stop_swipe()
            return
        original, reconstruction = self.original.currentLayer(), self.reconstruction.currentLayer()
        if original is None or reconstruction is None:
            self.swipe.setChecked(False)
            return
        self.item = SwipeItem(self.canvas)
        self.item.set_layers(original, reconstruction)
        self.tool = SwipeTool(self.canvas, self.item)
        self.tool.deactivated.connect(lambda: self.swipe.setChecked(False))
        self.canvas.setMapTool(self.tool)

    def _layers_removed(self, ids: list) -> None:
        """A swiped layer is going away: stop swiping before it is deleted."""
        if self.item is not None and any(layer is not None and layer.id() in ids for layer in self.item.layers):
            self.stop_swipe()

    def stop_swipe(self) -> None:
        if self.tool is not None:
            tool, self.tool = self.tool, None
            if self.canvas.mapTool() is tool:
                self.canvas.unsetMapTool(tool)
        if self.item is not None:
            self.item.remove()
            self.item = None
        if self.swipe.isChecked():
            self.swipe.setChecked(False)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.stop_swipe()
        super().closeEvent(event)

    def teardown(self) -> None:
        """Plugin unload: stop the tool and stop listening to the project."""
        self.stop_swipe()
        try:
            QgsProject.instance().layersWillBeRemoved.disconnect(self._layers_removed)
        except TypeError:
            pass

    def _message(self, text: str, level) -> None:
        self.iface.messageBar().pushMessage("MAGC", text, level=level, duration=0 if level == Qgis.Critical else 10)
