"""``make screenshots``: each dialog and the comparison on a real fixture layer, saved as PNG.

Skipped unless MAGC_SCREENSHOTS names the output folder (the make target sets it and runs
this under Xvfb). Uses the trained ``lite`` weights when installed, else ``tiny-lite`` with
random weights (the reconstruction is then noise, which the screenshots show honestly).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.gui import QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtCore import QCoreApplication, Qt
from qgis.PyQt.QtWidgets import QMainWindow, QVBoxLayout, QWidget

from plugin_helpers import magc_provider, single_thread, wait_run, wait_until  # noqa: F401 (fixtures)

OUT = os.environ.get("MAGC_SCREENSHOTS")
pytestmark = [pytest.mark.skipif(not OUT, reason="set MAGC_SCREENSHOTS=folder (make screenshots) to save screenshots"),
              pytest.mark.usefixtures("magc_provider")]


class ScreenshotIface:
    """The parts of QgisInterface the dialogs use, around a visible canvas and message bar."""

    def __init__(self) -> None:
        self.window = QMainWindow()
        self.window.setWindowTitle("QGIS — MAGC")
        body = QWidget()
        column = QVBoxLayout(body)
        column.setContentsMargins(0, 0, 0, 0)
        self.bar = QgsMessageBar()
        self.canvas = QgsMapCanvas()
        column.addWidget(self.bar)
        column.addWidget(self.canvas)
        self.window.setCentralWidget(body)
        self.window.resize(1280, 760)

    def mainWindow(self):  # noqa: N802
        return self.window

    def mapCanvas(self):  # noqa: N802
        return self.canvas

    def messageBar(self):  # noqa: N802
        return self.bar


def settle(ms: int = 300) -> None:
    wait_until(lambda: False, ms / 1000)


def save(widget, name: str) -> Path:
    widget.show()
    widget.raise_()
    settle()
    path = Path(OUT) / name
    assert widget.grab().save(str(path)), path
    return path


@pytest.fixture(scope="module")
def scene(fixtures_dir, tmp_path_factory):
    """sample_geotiff.tif with its 43 buildings, and a small desktop around them."""
    project = QgsProject.instance()
    raster = QgsRasterLayer(str(fixtures_dir / "sample_geotiff.tif"), "sample_geotiff")
    buildings = QgsVectorLayer(str(fixtures_dir / "geotiff_labels.geojson"), "buildings (OSM)", "ogr")
    project.addMapLayers([raster, buildings])
    iface = ScreenshotIface()
    yield iface, raster, buildings, tmp_path_factory.mktemp("shots")
    iface.window.close()
    project.removeAllMapLayers()
    project.layerTreeRoot().removeAllChildren()


def preset() -> tuple[str, bool]:
    from magc_qgis.models import model_status

    return ("lite", False) if model_status("lite").installed else ("tiny-lite", True)


def test_screenshots(scene) -> None:
    from magc_qgis.gui.compare_dock import CompareDock
    from magc_qgis.gui.compress_dialog import CompressDialog
    from magc_qgis.gui.decompress_dialog import DecompressDialog
    from magc_qgis.gui.deps_dialog import DepsDialog
    from magc_qgis.gui.settings_dialog import SettingsDialog

    iface, raster, buildings, tmp = scene
    name, untrained = preset()
    coded = tmp / "sample_geotiff.magc"

    canvas = iface.canvas
    canvas.setDestinationCrs(raster.crs())
    canvas.setLayers([buildings, raster])
    canvas.setExtent(raster.extent())
    compress = CompressDialog(iface)
    compress.raster.setLayer(raster)
    compress.maps.set_checked({buildings.id(): "auto"})
    compress.model.combo.setCurrentIndex(compress.model.combo.findData("lite"))
    compress.output.setFilePath(str(coded))
    save(compress, "compress.png")
    compress.model.combo.setCurrentIndex(compress.model.combo.findData(name))
    compress.allow_untrained.setChecked(untrained)
    compress.rate.setValue(0)
    outcome = wait_run(compress.start(), 600)
    assert outcome["ok"], outcome["error"]
    iface.window.show()
    canvas.refresh()
    wait_until(lambda: not canvas.isDrawing(), 30)
    save(iface.window, "compressed-message.png")

    decompress = DecompressDialog(iface)
    decompress.file.setFilePath(str(coded))
    save(decompress, "decompress.png")
    outcome = wait_run(decompress.start(), 600)
    assert outcome["ok"], outcome["error"]
    reconstruction = QgsProject.instance().mapLayersByName("sample_geotiff (MAGC)")[0]

    canvas.setLayers([buildings, reconstruction, raster])
    canvas.setExtent(raster.extent())
    dock = CompareDock(iface)
    iface.window.addDockWidget(Qt.RightDockWidgetArea, dock)
    dock.set_pair(raster, reconstruction)
    outcome = wait_run(dock.start(), 600)
    assert outcome["ok"], outcome["error"]
    dock.swipe.setChecked(True)
    iface.window.show()
    settle()
    canvas.refresh()
    wait_until(lambda: not canvas.isDrawing(), 30)
    dock.item.refresh()
    dock.item.wait()
    wait_until(lambda: all(image is not None for image in dock.item.images), 30)
    dock.item.set_split(canvas.width() * 0.45, 0)
    save(iface.window, "compare-swipe.png")

    dock.stop_swipe()
    difference = [layer for layer in QgsProject.instance().mapLayers().values() if "difference" in layer.name()][0]
    canvas.setLayers([difference])
    canvas.refresh()
    wait_until(lambda: not canvas.isDrawing(), 30)
    save(iface.window, "compare-difference.png")

    save(SettingsDialog(iface, iface.window), "settings.png")
    saved = sys.modules.get("torch")
    sys.modules["torch"] = None  # show the check as a user without PyTorch sees it
    try:
        from magc_qgis import deps

        save(DepsDialog(deps.full_check(), iface.window), "dependencies.png")
    finally:
        sys.modules["torch"] = saved
    QCoreApplication.processEvents()
