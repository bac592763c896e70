"""Decompress…: a .magc file back into a GeoTIFF, added to the "MAGC reconstructions" group.

Shows the file's header (size, CRS, model, rate, which map it needs), pre-selects the map
layers whose fingerprint matches, and copies the style of the original when one with the
same grid is in the project. Runs ``magc:decode_file`` in the background.
"""
from __future__ import annotations

import math
import os

from qgis.core import Qgis, QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QApplication, QDialog, QDialogButtonBox, QFormLayout, QLabel, QWidget

from ..layers import add_reconstruction, style_of
from ..paths import icon_path
from .map_match import header_extent, match_layers
from .tasks import AlgorithmRun, keep_running
from .widgets import DeviceCombo, MapLayersWidget


def describe_header(info: dict, matched: list | None) -> str:
    """The header as the user needs it: what it is, and what decoding will need."""
    if info.get("map_embedded"):
        need = "map stored in the file: no map layers needed"
    elif matched is None:
        need = (f"needs the map layers it was compressed with (fingerprint {info['map_fingerprint']}); "
                "none of the project's layers matched: select them and their classes")
    elif matched:
        need = "needs map layers; matched: " + ", ".join(f"{layer.name()} ({a})" for layer, a in matched)
    else:
        need = "compressed without map layers"
    rows = [
        ("Size", f"{info['width']} x {info['height']} px, {info['bands']} band(s) {info['dtype']}"),
        ("CRS", info.get("crs") or "none"), ("Model", f"{info['preset']}, rate {info['rate']}"),
        ("File", f"{info['bytes']} bytes, {info['bpp']:.4f} bits per pixel, {info['tiles']} tiles"),
        ("Map", need),
    ]
    return "<br>".join(f"<b>{k}</b>: {v}" for k, v in rows)


def same_grid_layer(info: dict) -> QgsRasterLayer | None:
    """A project raster with the file's size and extent: probably the original."""
    extent = header_extent(info)
    for layer in QgsProject.instance().mapLayers().values():
        if isinstance(layer, QgsRasterLayer) and (layer.width(), layer.height()) == (info["width"], info["height"]):
            e = layer.extent()
            if all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6) for a, b in
                   zip((e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()),
                       (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()))):
                return layer
    return None


class DecompressDialog(QDialog):
    def __init__(self, iface, parent: QWidget | None = None) -> None:
        super().__init__(parent or (iface.mainWindow() if iface else None))
        self.iface = iface
        self.setWindowTitle("MAGC — Decompress file")
        self.setWindowIcon(QIcon(icon_path()))
        self.file = QgsFileWidget()
        self.file.setFilter("MAGC files (*.magc)")
        self.header = QLabel("Choose a .magc file.")
        self.header.setWordWrap(True)
        self.header.setTextFormat(Qt.RichText)
        self.maps = MapLayersWidget()
        self.device = DeviceCombo()
        self.style_from = QgsMapLayerComboBox()
        self.style_from.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.style_from.setAllowEmptyLayer(True)
        self.output = QgsFileWidget()
        self.output.setStorageMode(QgsFileWidget.SaveFile)
        self.output.setFilter("GeoTIFF (*.tif *.tiff)")
        self.info: dict | None = None
        form = QFormLayout(self)
        for label, widget in (("MAGC file", self.file), ("Header", self.header), ("Map layers", self.maps),
                              ("Device", self.device), ("Style like", self.style_from), ("Output GeoTIFF", self.output)):
            form.addRow(label, widget)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Close)
        buttons.button(QDialogButtonBox.Ok).setText("Decompress")
        buttons.accepted.connect(self.start)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.file.fileChanged.connect(self.load_file)
        self.resize(620, 520)
        self.run: AlgorithmRun | None = None

    def load_file(self, path: str) -> None:
        """Read the header; pre-select matching map layers, the original's style, an output name."""
        from magc.config import load_preset
        from magc.errors import MagcError
        from magc.api import read_info

        self.info = None
        if not path or not os.path.isfile(path):
            self.header.setText("Choose a .magc file.")
            return
        try:
            info = read_info(path)
        except MagcError as exc:
            self.header.setText(f"<span style='color:#b3261e'>Not a readable MAGC file: {exc}</span>")
            return
        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            self.maps.reload()
            try:
                kind = load_preset(info["preset"]).map.kind
            except MagcError:
                kind = "classes"
            matched = match_layers(info, self.maps.layers, kind)
        finally:
            QApplication.restoreOverrideCursor()
        self.info = info
        self.maps.set_checked({layer.id(): a for layer, a in matched or []})
        self.header.setText(describe_header(info, matched))
        self.style_from.setLayer(same_grid_layer(info))
        self.output.setFilePath(path + ".tif")

    def parameters(self) -> dict:
        return {"INPUT": self.file.filePath(), **self.maps.parameters(), "DEVICE": self.device.device(),
                "OUTPUT": self.output.filePath()}

    def start(self) -> AlgorithmRun | None:
        parameters = self.parameters()
        if self.info is None or not parameters["OUTPUT"]:
            self._message("Choose a readable .magc file and an output GeoTIFF.", Qgis.Warning)
            return None
        style = style_of(self.style_from.currentLayer())
        name = os.path.basename(parameters["INPUT"])
        self.run = AlgorithmRun("magc:decode_file", parameters, f"MAGC: decompressing {name}",
                                self.iface.messageBar() if self.iface else None)
        self.run.finished.connect(lambda ok, results, error: self._finished(ok, results, error, name, style))
        keep_running(self.run)
        self.run.start()
        self.accept()
        return self.run

    def _finished(self, ok: bool, results: dict, error: str, name: str, style: str) -> None:
        if sip.isdeleted(self):  # the plugin was unloaded while the task ran
            return
        if not ok:
            self._message(f"Decompressing {name} failed: {error}", Qgis.Critical)
            return
        layer = add_reconstruction(results["OUTPUT"], os.path.splitext(name)[0] + " (MAGC)", style)
        if layer is None:
            self._message(f"Decompressed {name} but QGIS cannot open {results['OUTPUT']}", Qgis.Critical)
        else:
            self._message(f"Decompressed {name} → {results['OUTPUT']} (in the “MAGC reconstructions” group)",
                          Qgis.Success)

    def _message(self, text: str, level) -> None:
        if self.iface:
            self.iface.messageBar().pushMessage("MAGC", text, level=level, duration=0 if level == Qgis.Critical else 15)
