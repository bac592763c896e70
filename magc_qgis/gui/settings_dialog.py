"""Settings…: default device, model folders, weights download, and the dependency check."""
from __future__ import annotations

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QTextBrowser,
    QWidget,
)

from .. import deps, settings
from ..weights_download import read_manifest


class SettingsDialog(QDialog):
    def __init__(self, iface=None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.setWindowTitle("MAGC — Settings")
        missing = deps.full_check()
        self.ok = not missing
        self.device = QComboBox()
        self._fill_devices()
        self.weights = QgsFileWidget()
        self.weights.setStorageMode(QgsFileWidget.GetDirectory)
        self.weights.setFilePath(settings.weights_folder())
        self.sd = QgsFileWidget()
        self.sd.setStorageMode(QgsFileWidget.GetDirectory)
        self.sd.setFilePath(settings.sd_folder())
        self.deps_status = QLabel("all installed" if self.ok else "missing: " + ", ".join(m.module for m in missing))
        self.check = QPushButton("Check dependencies…")
        self.check.clicked.connect(self.open_deps)
        self.models = QTextBrowser()
        self.models.setHtml(self._models_text())
        self.models.setMinimumHeight(170)
        form = QFormLayout(self)
        form.addRow("Default device", self.device)
        form.addRow("Extra MAGC weights folder", self.weights)
        form.addRow("Stable Diffusion 2.1-base folder", self.sd)
        form.addRow("Models", self.models)
        form.addRow("Dependencies", self.deps_status)
        form.addRow("", self.check)
        buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.deps_dialog = None
        self.setMinimumWidth(720)
        self.adjustSize()

    def _fill_devices(self) -> None:
        rows = [("auto", "auto"), ("cpu", "CPU")]
        if self.ok:
            from ..models import device_labels

            rows = device_labels()
        for device, label in rows:
            self.device.addItem(label, device)
        self.device.setCurrentIndex(max(self.device.findData(settings.default_device()), 0))

    def _models_text(self) -> str:
        if not self.ok:
            return "install the dependencies first"
        from ..models import model_status
        from ..processing.params import preset_names

        lines = []
        for name in preset_names():
            if name.startswith("tiny"):
                continue
            status = model_status(name)
            lines.append(f"<b>{name}</b>: {status.text}")
        manifest = read_manifest()
        lines += [f"<i>{n}</i> download: {'available' if e.url else 'not published yet'}" for n, e in manifest.items()]
        return "<br>".join(lines)

    def open_deps(self) -> None:
        from .deps_dialog import DepsDialog

        self.deps_dialog = DepsDialog(parent=self)
        self.deps_dialog.show()

    def save(self) -> None:
        settings.set_default_device(self.device.currentData() or "auto")
        settings.set_weights_folder(self.weights.filePath())
        settings.set_sd_folder(self.sd.filePath())
        self.accept()
