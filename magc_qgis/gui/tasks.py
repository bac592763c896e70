"""Running a MAGC algorithm in the background, as the Processing dialog does.

The dialogs build parameters and hand them to ``AlgorithmRun``: the same algorithm class as
the toolbox, in a ``QgsProcessingAlgRunnerTask`` (``prepareAlgorithm`` runs on the main
thread in its constructor, ``processAlgorithm`` on a worker). Progress shows in the task
manager and in a message-bar item with a Cancel button; the end is reported through the
``finished`` signal (the task manager deletes finished tasks, so nothing may ask the task
afterwards).
"""
from __future__ import annotations

from qgis.core import (
    QgsApplication,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
)
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtCore import QObject, QTimer, pyqtSignal, pyqtSlot
from qgis.PyQt.QtWidgets import QProgressBar, QPushButton


_RUNNING: set[AlgorithmRun] = set()


def keep_running(run: AlgorithmRun) -> None:
    """Hold a reference until the run ends: a dialog may be closed while its task works."""
    _RUNNING.add(run)
    run.finished.connect(lambda *_: _RUNNING.discard(run))


def running() -> list[AlgorithmRun]:
    return list(_RUNNING)


class TaskFeedback(QgsProcessingFeedback):
    """Keeps the errors reported by the algorithm, so the user sees the library's message."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803
        self.errors.append(error)
        super().reportError(error, fatalError)


class AlgorithmRun(QObject):
    """One background run of a Processing algorithm; emits ``finished(ok, results, error)``."""

    finished = pyqtSignal(bool, dict, str)

    def __init__(self, algorithm_id: str, parameters: dict, title: str, message_bar: QgsMessageBar | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.algorithm_id, self.parameters, self.title = algorithm_id, parameters, title
        self.message_bar = message_bar
        self.context = QgsProcessingContext()
        self.context.setProject(QgsProject.instance())
        self.feedback = TaskFeedback()
        self.context.setFeedback(self.feedback)
        self.task: QgsProcessingAlgRunnerTask | None = None
        self._bar_item = None
        self._progress_bar: QProgressBar | None = None
        self.done = False

    def start(self) -> bool:
        """Prepare (main thread) and queue the task; False when preparing failed (then
        ``finished`` still fires, with the error)."""
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(self.algorithm_id)
        if algorithm is None:
            QTimer.singleShot(0, lambda: self._finish(False, {}, f"algorithm {self.algorithm_id} is not available"))
            return False
        self.task = QgsProcessingAlgRunnerTask(algorithm, self.parameters, self.context, self.feedback)
        if self.task.isCanceled():  # prepareAlgorithm refused
            self.task = None
            QTimer.singleShot(0, lambda: self._finish(False, {}, self.error_text()))
            return False
        self.task.setDescription(self.title)
        self.task.executed.connect(self._executed)
        self._show_progress()
        QgsApplication.taskManager().addTask(self.task)
        return True

    def cancel(self) -> None:
        self.feedback.cancel()

    def error_text(self) -> str:
        return "\n".join(e for e in self.feedback.errors if e.strip()) or "failed; see the Processing log for details"

    def _executed(self, ok: bool, results: dict) -> None:
        if not ok and self.feedback.isCanceled():
            self._finish(False, {}, "cancelled; no partial file was left")
        else:
            self._finish(ok, dict(results or {}), "" if ok else self.error_text())

    def _finish(self, ok: bool, results: dict, error: str) -> None:
        self.done = True
        self.task = None
        self._hide_progress()
        self.finished.emit(ok, results, error)

    def _show_progress(self) -> None:
        if self.message_bar is None:
            return
        item = self.message_bar.createMessage("MAGC", self.title)
        progress = QProgressBar()
        progress.setMaximum(100)
        cancel = QPushButton("Cancel")
        cancel.clicked.connect(self.cancel)
        item.layout().addWidget(progress)
        item.layout().addWidget(cancel)
        self._progress_bar = progress
        # a real slot of this main-thread object: the worker's signal is queued, not run on the worker
        self.feedback.progressChanged.connect(self._progress)
        self._bar_item = self.message_bar.pushWidget(item)

    @pyqtSlot(float)
    def _progress(self, value: float) -> None:
        if self._progress_bar is not None:
            self._progress_bar.setValue(int(value))

    def _hide_progress(self) -> None:
        if self.message_bar is not None and self._bar_item is not None:
            self.message_bar.popWidget(self._bar_item)
        self._bar_item = None
        self._progress_bar = None
