"""The dialogs as a user drives them: each runs its algorithm in a background task
(QgsProcessingAlgRunnerTask); the end is seen through signals, never task.status()."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from qgis.core import Qgis, QgsProject, QgsSingleBandGrayRenderer
from qgis.PyQt.QtGui import QColor, QImage, QPainter

from plugin_helpers import (  # noqa: F401 (fixtures)
    add_raster, add_vector, crops, magc_provider, project, single_thread, wait_run, wait_until)

from magc_qgis import settings
from magc_qgis.layers import GROUP

pytestmark = pytest.mark.usefixtures("magc_provider")


def compress(qgis_iface, raster, maps, output: Path):
    from magc_qgis.gui.compress_dialog import CompressDialog

    dialog = CompressDialog(qgis_iface)
    dialog.raster.setLayer(raster)
    dialog.maps.reload()
    dialog.maps.set_checked({layer.id(): "class=building" for layer in maps})
    dialog.model.combo.setCurrentIndex(dialog.model.combo.findData("tiny-lite"))
    dialog.rate.setValue(0)
    dialog.device.setCurrentIndex(dialog.device.findData("cpu"))
    dialog.allow_untrained.setChecked(True)
    dialog.output.setFilePath(str(output))
    return dialog


def test_compress_then_decompress_in_background(qgis_iface, project, crops, tmp_path: Path) -> None:
    raster = add_raster(project, crops["sample"])
    raster.setRenderer(QgsSingleBandGrayRenderer(raster.dataProvider(), 1))
    raster.setOpacity(0.75)  # a style to carry over to the reconstruction
    buildings = add_vector(project, crops["buildings"])
    qgis_iface.messageBar().clear_messages()

    dialog = compress(qgis_iface, raster, [buildings], tmp_path / "s.magc")
    assert "tiny-lite" in dialog.model.combo.currentText() and "not installed" in dialog.model.combo.currentText()
    run = dialog.start()
    outcome = wait_run(run)
    assert outcome["ok"], outcome["error"]
    assert (tmp_path / "s.magc").is_file()
    success = qgis_iface.messageBar().get_messages(Qgis.Success)
    assert any("bits per pixel" in m and "KiB" in m for m in success), success
    assert settings.remembered_map(outcome["results"]["MAP_FINGERPRINT"]) == [(buildings.source(), "class=building")]

    from magc_qgis.gui.decompress_dialog import DecompressDialog

    dialog = DecompressDialog(qgis_iface)
    dialog.file.setFilePath(str(tmp_path / "s.magc"))  # reads the header, matches the map
    header = dialog.header.text()
    assert "256 x 256" in header and "EPSG:32616" in header and "tiny-lite" in header and "buildings" in header
    assert [layer for layer, _ in dialog.maps.selected()] == [buildings]
    assert dialog.style_from.currentLayer() is raster
    dialog.output.setFilePath(str(tmp_path / "s.tif"))
    dialog.device.setCurrentIndex(dialog.device.findData("cpu"))
    outcome = wait_run(dialog.start())
    assert outcome["ok"], outcome["error"]
    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP)
    assert group is not None and len(group.findLayers()) == 1
    layer = group.findLayers()[0].layer()
    assert layer.isValid() and layer.crs() == raster.crs() and layer.extent() == raster.extent()
    assert isinstance(layer.renderer(), QgsSingleBandGrayRenderer) and layer.opacity() == pytest.approx(0.75)


def test_compress_failure_is_reported(qgis_iface, project, crops, tmp_path: Path) -> None:
    raster = add_raster(project, crops["rgb"])
    dialog = compress(qgis_iface, raster, [], tmp_path / "u.magc")
    dialog.allow_untrained.setChecked(False)  # tiny-lite has no trained weights
    qgis_iface.messageBar().clear_messages()
    outcome = wait_run(dialog.start())
    assert not outcome["ok"] and "Allow untrained" in outcome["error"]
    assert any("failed" in m for m in qgis_iface.messageBar().get_messages(Qgis.Critical))
    assert not (tmp_path / "u.magc").exists()


def test_cancel_from_the_dialog_run(qgis_iface, project, crops, tmp_path: Path) -> None:
    raster = add_raster(project, crops["rgb"])
    run = compress(qgis_iface, raster, [], tmp_path / "c.magc").start()
    run.cancel()  # what the message bar's Cancel button and the task manager do
    outcome = wait_run(run)
    assert not outcome["ok"] and "cancelled" in outcome["error"]
    assert not (tmp_path / "c.magc").exists()


def decoded_pair(project, crops, tmp_path: Path):
    import processing

    raster = add_raster(project, crops["rgb"], "original")
    coded = processing.run("magc:encode_raster", {"INPUT": raster, "PRESET": "tiny-lite", "ALLOW_UNTRAINED": True,
                                                  "DEVICE": "cpu", "OUTPUT": str(tmp_path / "rgb.magc")})
    processing.run("magc:decode_file", {"INPUT": coded["OUTPUT"], "DEVICE": "cpu", "OUTPUT": str(tmp_path / "rgb.magc.tif")})
    return raster, add_raster(project, tmp_path / "rgb.magc.tif", "reconstruction")


def test_compare_panel_metrics_and_difference(qgis_iface, project, crops, tmp_path: Path) -> None:
    from magc_qgis.gui.compare_dock import CompareDock

    original, reconstruction = decoded_pair(project, crops, tmp_path)
    dock = CompareDock(qgis_iface)
    dock.set_pair(original, reconstruction)
    assert dock.file.filePath() == str(tmp_path / "rgb.magc")  # found beside the reconstruction
    outcome = wait_run(dock.start())
    assert outcome["ok"], outcome["error"]
    values = {dock.table.item(r, 0).text(): dock.table.item(r, 1).text() for r in range(dock.table.rowCount())}
    assert float(values["Bits per pixel"]) > 0 and math.isfinite(float(values["PSNR (dB)"]))
    assert 0 <= float(values["MS-SSIM"]) <= 1
    assert values["mIoU (land cover)"].startswith("—") or float(values["mIoU (land cover)"]) >= 0
    difference = [n.layer() for n in QgsProject.instance().layerTreeRoot().findGroup(GROUP).findLayers()]
    assert len(difference) == 1 and difference[0].isValid() and difference[0].crs() == original.crs()
    assert difference[0].renderer().type() == "singlebandpseudocolor"
    dock.deleteLater()


def test_swipe_tool_from_the_panel(qgis_iface, qgis_canvas, project, crops, tmp_path: Path) -> None:
    from magc_qgis.gui.compare_dock import CompareDock

    original, reconstruction = decoded_pair(project, crops, tmp_path)
    dock = CompareDock(qgis_iface)
    dock.set_pair(original, reconstruction)
    dock.swipe.setChecked(True)
    assert qgis_canvas.mapTool() is dock.tool and dock.item.scene() is qgis_canvas.scene()
    project.removeMapLayer(reconstruction.id())  # a swiped layer goes: the swipe stops first
    assert dock.item is None and qgis_canvas.mapTool() is None and not dock.swipe.isChecked()
    dock.teardown()
    dock.deleteLater()


def test_swipe_item_paints_both_layers(project, crops, tmp_path: Path) -> None:
    from qgis.gui import QgsMapCanvas

    from magc_qgis.gui.swipe import SwipeItem

    original, reconstruction = decoded_pair(project, crops, tmp_path)
    canvas = QgsMapCanvas()
    canvas.resize(400, 300)
    canvas.show()  # offscreen platform: the canvas takes its size once shown
    assert wait_until(lambda: canvas.mapSettings().outputSize().width() > 350, 10)  # 400 less the frame
    canvas.setDestinationCrs(original.crs())
    canvas.setExtent(original.extent())
    item = SwipeItem(canvas)
    item.set_layers(original, reconstruction)
    item.wait()
    assert wait_until(lambda: all(image is not None for image in item.images), 30)
    item.set_split(100, 0)  # the line at x = 100 px

    size = item.boundingRect().size().toSize()
    image = QImage(size, QImage.Format_ARGB32)
    image.fill(QColor(0, 0, 0, 0))
    painter = QPainter(image)
    item.paint(painter)
    painter.end()
    first, second = (i.scaled(size) for i in item.images)
    y = size.height() // 2
    assert image.pixel(50, y) == first.pixel(50, y)  # left of the line: the original
    assert image.pixel(300, y) == second.pixel(300, y)  # right of it: the reconstruction
    assert first.pixel(50, y) != second.pixel(50, y)  # (random weights: they differ)
    assert QColor(image.pixel(100, y)) in (QColor(255, 255, 255), QColor(20, 20, 20))  # the line itself
    item.remove()
    canvas.deleteLater()


def test_settings_dialog_saves(qgis_iface) -> None:
    from magc_qgis.gui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(qgis_iface)
    assert "lite" in dialog.models.toPlainText() and "magc-sd21" in dialog.models.toPlainText()
    dialog.device.setCurrentIndex(dialog.device.findData("cpu"))
    dialog.save()
    assert settings.default_device() == "cpu"
    settings.set_default_device("auto")


def test_weights_download_task(tmp_path: Path) -> None:
    """The background download used by the model chooser's Download button."""
    import hashlib

    from magc_qgis.gui.download import start_download
    from magc_qgis.weights_download import WeightsEntry

    source = tmp_path / "w.safetensors"
    source.write_bytes(b"weights" * 1000)
    entry = WeightsEntry("x", "w.safetensors", source.as_uri(), hashlib.sha256(source.read_bytes()).hexdigest())
    outcome = []
    task = start_download(entry, str(tmp_path / "user"))
    task.done.connect(lambda ok, message: outcome.append((ok, message)))
    assert wait_until(lambda: bool(outcome), 30)
    assert outcome[0][0] and (tmp_path / "user" / "w.safetensors").read_bytes() == source.read_bytes()
