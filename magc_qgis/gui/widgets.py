"""Widgets shared by the dialogs: map layers with class assignment, device, model."""
from __future__ import annotations

from qgis.core import QgsMapLayer, QgsProject, QgsVectorLayer
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import settings
from ..models import ModelStatus, device_labels, model_status

CLASSES = ("building", "road", "water", "vegetation")
OSM_FIELDS = {"class", "fclass", "building", "highway", "waterway", "natural", "landuse", "leisure", "water", "type"}
NAME_HINTS = (("build", "building"), ("house", "building"), ("road", "road"), ("street", "road"),
              ("highway", "road"), ("water", "water"), ("river", "water"), ("lake", "water"),
              ("veg", "vegetation"), ("forest", "vegetation"), ("park", "vegetation"), ("tree", "vegetation"),
              ("grass", "vegetation"))


def default_assignment(layer: QgsVectorLayer) -> str:
    """Remembered choice; else 'auto' when a class/OSM field exists; else a guess from the name."""
    remembered = settings.class_assignment(layer.source())
    if remembered:
        return remembered
    if OSM_FIELDS & {name.lower() for name in layer.fields().names()}:
        return "auto"
    lowered = layer.name().lower()
    return next((f"class={cls}" for hint, cls in NAME_HINTS if hint in lowered), "auto")


class MapLayersWidget(QTableWidget):
    """Project vector layers, each with a tick box and a class assignment."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 2, parent)
        self.setHorizontalHeaderLabels(["Map layer", "Classes"])
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeToContents)
        self.verticalHeader().hide()
        self.setMinimumHeight(110)
        self.layers: list[QgsVectorLayer] = []
        self.reload()

    def reload(self) -> None:
        self.layers = [layer for layer in QgsProject.instance().mapLayers().values()
                       if layer.type() == QgsMapLayer.VectorLayer and layer.isSpatial()]
        self.layers.sort(key=lambda layer: layer.name().lower())
        self.setRowCount(0)  # drops the old rows' combo boxes before new ones are made
        self.setRowCount(len(self.layers))
        for row, layer in enumerate(self.layers):
            item = QTableWidgetItem(layer.name())
            item.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
            item.setCheckState(Qt.Unchecked)
            item.setToolTip(layer.source())
            self.setItem(row, 0, item)
            self.setCellWidget(row, 1, self._assignment_combo(layer))

    @staticmethod
    def _assignment_combo(layer: QgsVectorLayer) -> QComboBox:
        combo = QComboBox()
        combo.addItem("auto (class field / OSM tags)", "auto")
        for cls in CLASSES:
            combo.addItem(f"all features: {cls}", f"class={cls}")
        for name in layer.fields().names():
            combo.addItem(f"field: {name}", f"field={name}")
        index = combo.findData(default_assignment(layer))
        combo.setCurrentIndex(max(index, 0))
        return combo

    def set_checked(self, choices: dict[str, str]) -> None:
        """Tick the layers whose id is in ``choices`` and set their assignment."""
        for row, layer in enumerate(self.layers):
            chosen = layer.id() in choices
            self.item(row, 0).setCheckState(Qt.Checked if chosen else Qt.Unchecked)
            if chosen:
                combo = self.cellWidget(row, 1)
                combo.setCurrentIndex(max(combo.findData(choices[layer.id()]), 0))

    def selected(self) -> list[tuple[QgsVectorLayer, str]]:
        return [(layer, self.cellWidget(row, 1).currentData()) for row, layer in enumerate(self.layers)
                if self.item(row, 0).checkState() == Qt.Checked]

    def parameters(self) -> dict:
        """MAPS and MAP_CLASSES for the algorithms; remembers each layer's assignment."""
        chosen = self.selected()
        for layer, assignment in chosen:
            settings.set_class_assignment(layer.source(), assignment)
        return {"MAPS": [layer.id() for layer, _ in chosen], "MAP_CLASSES": ";".join(a for _, a in chosen)}


class DeviceCombo(QComboBox):
    """auto / CPU / each CUDA GPU found (with its name and memory)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        for device, label in device_labels():
            self.addItem(label, device)
        self.setCurrentIndex(max(self.findData(settings.default_device()), 0))

    def device(self) -> str:
        return self.currentData() or "auto"


class ModelChooser(QWidget):
    """Preset with its install status; the Stable Diffusion folder when the preset needs one."""

    changed = pyqtSignal()

    def __init__(self, presets: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.statuses: dict[str, ModelStatus] = {name: model_status(name) for name in presets}
        self.combo = QComboBox()
        for name, status in self.statuses.items():
            tag = "" if status.installed else " — not installed"
            tag += " (test model)" if name.startswith("tiny") else ""
            tag = " — embedded default" + tag if name == "lite" else tag
            self.combo.addItem(name + tag, name)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.download = QPushButton("Download weights…")
        self.sd_folder = QgsFileWidget()
        self.sd_folder.setStorageMode(QgsFileWidget.GetDirectory)
        self.sd_folder.setFilePath(settings.sd_folder())
        self.sd_label = QLabel("Stable Diffusion 2.1-base folder (diffusers layout):")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.combo, self.status, self.download, self.sd_label, self.sd_folder):
            layout.addWidget(widget)
        self.combo.currentIndexChanged.connect(self._update)
        self.download.clicked.connect(self.start_download)
        self.download_task = None
        self.combo.setCurrentIndex(max(self.combo.findData("lite"), 0))
        self._update()

    def preset(self) -> str:
        return self.combo.currentData()

    def current(self) -> ModelStatus:
        return self.statuses[self.preset()]

    def _update(self) -> None:
        status = self.current()
        colour = "#1b7f3b" if status.installed else "#b3261e"
        self.status.setText(f"<span style='color:{colour}'>{status.text}</span>")
        self.status.setToolTip(status.description)
        self.download.setVisible(not status.installed and status.downloadable)
        self.sd_label.setVisible(status.needs_sd_weights)
        self.sd_folder.setVisible(status.needs_sd_weights)
        self.changed.emit()

    def refresh(self) -> None:
        self.statuses[self.preset()] = model_status(self.preset())
        self._update()

    def start_download(self) -> None:
        """Fetch the preset's weights (manifest URL, checksum) into the user's weights folder."""
        from magc.models.loading import user_weights_dir

        from ..weights_download import read_manifest
        from .download import start_download

        self.download.setEnabled(False)
        self.status.setText("downloading… (progress in the task manager)")
        self.download_task = start_download(read_manifest()[self.preset()], str(user_weights_dir()))
        self.download_task.done.connect(self._downloaded)

    def _downloaded(self, ok: bool, message: str) -> None:
        self.download_task = None
        self.download.setEnabled(True)
        self.refresh()
        if not ok:
            self.status.setText(f"<span style='color:#b3261e'>{message}</span>")
