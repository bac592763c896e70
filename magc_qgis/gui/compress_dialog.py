"""Compress…: a raster layer and its map layers into a .magc file, in the background.

Runs ``magc:encode_raster`` (the toolbox algorithm) through ``AlgorithmRun``; ends with a
message giving the file size and bpp, and remembers which layers made the map so that
Decompress… can pre-select them.
"""
from __future__ import annotations

import os

from qgis.core import Qgis, QgsMapLayerProxyModel, QgsProviderRegistry
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QRadioButton,
    QSpinBox,
    QWidget,
)

from .. import settings
from ..paths import icon_path
from ..processing.params import preset_names
from .tasks import AlgorithmRun, keep_running
from .widgets import DeviceCombo, MapLayersWidget, ModelChooser


class CompressDialog(QDialog):
    def __init__(self, iface, parent: QWidget | None = None) -> None:
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.iface = iface
        self.setWindowTitle("MAGC — Compress raster")
        self.raster = QgsMapLayerComboBox()
        self.raster.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.maps = MapLayersWidget()
        self.model = ModelChooser(preset_names())
        self.by_rate, self.by_bpp = QRadioButton("Rate index"), QRadioButton("Target bpp")
        self.rate, self.bpp = QSpinBox(), QDoubleSpinBox()
        self.bpp.setDecimals(3)
        self.bpp.setRange(0.001, 2.0)
        self.bpp.setSingleStep(0.01)
        self.bpp.setValue(0.05)
        self.device = DeviceCombo()
        self.allow_untrained = QCheckBox("Allow untrained weights (testing only: the output is noise)")
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.SaveFile)
        self.output.setFilter("MAGC files (*.magc)")
        self._auto_output = ""
        self._build()
        self.raster.layerChanged.connect(self._suggest_output)
        self.model.changed.connect(self._rates)
        self._rates()
        self._suggest_output()
        self.run: AlgorithmRun | None = None

    def _build(self) -> None:
        rate_row = QWidget()
        row = QHBoxLayout(rate_row)
        row.setContentsMargins(0, 0, 0, 0)
        group = QButtonGroup(self)
        for widget in (self.by_rate, self.rate, self.by_bpp, self.bpp):
            row.addWidget(widget)
        group.addButton(self.by_rate)
        group.addButton(self.by_bpp)
        self.by_rate.setChecked(True)
        form = QFormLayout(self)
        form.addRow("Raster layer", self.raster)
        form.addRow("Map layers", self.maps)
        form.addRow("Model", self.model)
        form.addRow("Bitrate", rate_row)
        form.addRow("Device", self.device)
        form.addRow("", self.allow_untrained)
        form.addRow("Output file", self.output)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Close)
        buttons.button(QDialogButtonBox.Ok).setText("Compress")
        buttons.accepted.connect(self.start)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.setWindowIcon(QIcon(icon_path()))
        self.resize(620, 560)

    def _rates(self) -> None:
        status = self.model.current()
        self.rate.setRange(0, max(status.rates - 1, 0))
        self.rate.setValue(status.default_rate)
        measured = status.bpp_per_rate or {}
        detail = ", ".join(f"{r}: {b:.3f}" for r, b in sorted(measured.items()))
        self.rate.setToolTip(f"0 (lowest bitrate) … {status.rates - 1}; default {status.default_rate}"
                             + (f"\nmeasured bits per pixel by rate: {detail}" if detail else ""))

    def _suggest_output(self) -> None:
        layer = self.raster.currentLayer()
        if layer is None or (self.output.filePath() and self.output.filePath() != self._auto_output):
            return
        path = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source()).get("path") or ""
        if path:
            self._auto_output = os.path.splitext(path)[0] + ".magc"
            self.output.setFilePath(self._auto_output)

    def parameters(self) -> dict:
        layer = self.raster.currentLayer()
        parameters = {
            "INPUT": layer.id() if layer else None, **self.maps.parameters(), "PRESET": self.model.preset(),
            "DEVICE": self.device.device(), "ALLOW_UNTRAINED": self.allow_untrained.isChecked(),
            "SD_WEIGHTS": self.model.sd_folder.filePath() or None, "OUTPUT": self.output.filePath(),
        }
        parameters["RATE" if self.by_rate.isChecked() else "BPP"] = (
            self.rate.value() if self.by_rate.isChecked() else self.bpp.value())
        return parameters

    def start(self) -> AlgorithmRun | None:
        """Queue the encode task; the dialog closes, progress continues in the message bar."""
        parameters = self.parameters()
        if not parameters["INPUT"] or not parameters["OUTPUT"]:
            self._message("Choose a raster layer and an output file.", Qgis.Warning)
            return None
        if self.model.sd_folder.filePath():
            settings.set_sd_folder(self.model.sd_folder.filePath())
        name = self.raster.currentLayer().name()
        self.run = AlgorithmRun("magc:encode_raster", parameters, f"MAGC: compressing {name}",
                                self.iface.messageBar() if self.iface else None)
        self.run.finished.connect(lambda ok, results, error: self._finished(ok, results, error, name))
        keep_running(self.run)
        self.run.start()
        self.accept()
        return self.run

    def _finished(self, ok: bool, results: dict, error: str, name: str) -> None:
        if sip.isdeleted(self):  # the plugin was unloaded while the task ran
            return
        if not ok:
            self._message(f"Compressing {name} failed: {error}", Qgis.Critical)
            return
        size = results.get("BYTES", 0)
        self._message(f"Compressed {name}: {size / 1024:.1f} KiB, {results.get('BPP', 0):.4f} bits per pixel "
                      f"(rate {results.get('RATE_USED')}, {results.get('DEVICE_USED')}) → {results.get('OUTPUT')}",
                      Qgis.Success)
        fingerprint = results.get("MAP_FINGERPRINT")
        if fingerprint:
            settings.remember_map(fingerprint, [(layer.source(), a) for layer, a in self.maps.selected()])

    def _message(self, text: str, level) -> None:
        if self.iface:
            self.iface.messageBar().pushMessage("MAGC", text, level=level, duration=0 if level == Qgis.Critical else 15)
