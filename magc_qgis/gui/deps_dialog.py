"""The dependency check: what is missing, the exact pip command, and an Install button.

Nothing is installed unless the user presses Install. pip runs in a QProcess (QGIS stays
responsive) with its output in a visible log; packages go to the plugin's ``deps/`` folder
as binary wheels, constrained to keep QGIS's numpy / shapely / pyproj and never GDAL.
"""
from __future__ import annotations

from qgis.PyQt.QtCore import QProcess, QProcessEnvironment, Qt
from qgis.PyQt.QtGui import QFont
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import deps


class DepsDialog(QDialog):
    def __init__(self, missing: list[deps.Missing] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("MAGC — dependencies")
        self.missing = deps.full_check() if missing is None else missing
        self.summary = QLabel(deps.missing_text(self.missing))
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.extra = QLineEdit()
        self.extra.setPlaceholderText("extra pip options, e.g. --index-url https://download.pytorch.org/whl/cpu "
                                      "--extra-index-url https://pypi.org/simple")
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setFont(QFont("Monospace", 8))
        self.log.setPlaceholderText("pip's output appears here")
        self.install = QPushButton("Install into the plugin folder")
        self.install.setEnabled(any(m.module != "magc" for m in self.missing))
        self.install.clicked.connect(self.start_install)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for widget in (self.summary, self.extra, self.install, self.log, buttons):
            layout.addWidget(widget)
        self.process: QProcess | None = None
        self.resize(760, 520)

    def command(self) -> list[str]:
        extra = self.extra.text().split()
        return deps.pip_command(self.missing, extra)

    def start_install(self) -> None:
        """Run pip (only on the user's click)."""
        deps.DEPS_DIR.mkdir(exist_ok=True)
        deps.constraints_file()
        command = self.command()
        self.log.appendPlainText("$ " + " ".join(command) + "\n")
        self.process = QProcess(self)
        environment = QProcessEnvironment()
        for key, value in deps.install_environment().items():
            environment.insert(key, value)
        self.process.setProcessEnvironment(environment)
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._done)
        self.install.setEnabled(False)
        self.process.start(command[0], command[1:])

    def _read(self) -> None:
        data = bytes(self.process.readAllStandardOutput()).decode(errors="replace")
        self.log.insertPlainText(data)
        self.log.ensureCursorVisible()

    def _done(self, code: int, _status=None) -> None:
        deps.activate_deps()
        self.missing = deps.full_check()
        if code == 0 and not self.missing:
            self.log.appendPlainText("\nInstalled. Restart QGIS if a MAGC tool had already failed to load.")
        else:
            self.log.appendPlainText(f"\npip finished with status {code}.")
        self.summary.setText(deps.missing_text(self.missing))
        self.install.setEnabled(bool(self.missing))
