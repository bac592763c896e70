"""Downloading weights in the background (a QgsTask), with a message at the end."""
from __future__ import annotations

from qgis.core import QgsApplication, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..weights_download import DownloadError, WeightsEntry, download


class DownloadTask(QgsTask):
    """Fetches one manifest entry into ``folder``; ``done(ok, message)`` on the main thread."""

    done = pyqtSignal(bool, str)

    def __init__(self, entry: WeightsEntry, folder: str) -> None:
        super().__init__(f"Downloading MAGC weights {entry.file}", QgsTask.CanCancel)
        self.entry, self.folder = entry, folder
        self.message = ""

    def run(self) -> bool:
        try:
            path = download(self.entry, self.folder, progress=lambda f: self.setProgress(100 * f), cancel=self.isCanceled)
        except DownloadError as exc:
            self.message = str(exc)
            return False
        self.message = f"weights installed: {path}"
        return True

    def finished(self, result: bool) -> None:
        self.done.emit(result, self.message or "download cancelled")


def start_download(entry: WeightsEntry, folder: str) -> DownloadTask:
    task = DownloadTask(entry, folder)
    QgsApplication.taskManager().addTask(task)
    return task
