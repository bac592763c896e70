"""A swipe between two layers on the map canvas (QGIS 3.22 has no QMapCompare, 3.34+).

``SwipeItem`` renders each layer alone for the canvas's current view and paints the first
left of (or above) the split line and the second beyond it, so what is compared does not
depend on the layer order or visibility in the legend. ``SwipeTool`` moves the line with
the mouse (press and drag, or click).
"""
from __future__ import annotations

from qgis.core import QgsMapLayer, QgsMapRendererParallelJob, QgsMapSettings
from qgis.gui import QgsMapCanvas, QgsMapCanvasItem, QgsMapTool
from qgis.PyQt.QtCore import QPointF, QRectF, Qt
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter, QPen
from qgis.PyQt import sip


class SwipeItem(QgsMapCanvasItem):
    def __init__(self, canvas: QgsMapCanvas) -> None:
        super().__init__(canvas)
        self.canvas = canvas
        self.layers: tuple[QgsMapLayer | None, QgsMapLayer | None] = (None, None)
        self.labels = ("original", "reconstruction")
        self.images: list[QImage | None] = [None, None]
        self.jobs: list[QgsMapRendererParallelJob | None] = [None, None]
        self.split = 0.5  # fraction of the width (vertical line) or height
        self.vertical = True
        self.setZValue(100)
        canvas.mapCanvasRefreshed.connect(self.refresh)

    def set_layers(self, first: QgsMapLayer, second: QgsMapLayer, labels: tuple[str, str] = ("original", "reconstruction")) -> None:
        self.layers, self.labels = (first, second), labels
        self.refresh()

    def set_split(self, x: float, y: float) -> None:
        """Split at canvas pixel (x, y)."""
        size = self.canvas.mapSettings().outputSize()
        self.split = min(max((x / max(size.width(), 1)) if self.vertical else (y / max(size.height(), 1)), 0.0), 1.0)
        self.update()

    def refresh(self) -> None:
        """Render both layers for the current view (asynchronously)."""
        settings = self.canvas.mapSettings()
        self.setRect(settings.visibleExtent())
        for i, layer in enumerate(self.layers):
            if self.jobs[i] is not None:
                self.jobs[i].cancelWithoutBlocking()
            if layer is None or sip.isdeleted(layer):
                self.images[i] = None
                continue
            job_settings = QgsMapSettings(settings)
            job_settings.setLayers([layer])
            job = QgsMapRendererParallelJob(job_settings)
            job.finished.connect(lambda i=i, job=job: self._rendered(i, job))
            self.jobs[i] = job
            job.start()

    def wait(self) -> None:
        """Block until both renders are done (for tests and screenshots)."""
        for job in list(self.jobs):
            if job is not None:
                job.waitForFinished()

    def _rendered(self, index: int, job: QgsMapRendererParallelJob) -> None:
        if self.jobs[index] is job:
            self.images[index] = job.renderedImage()
            self.jobs[index] = None
            self.update()

    def paint(self, painter: QPainter, *args) -> None:
        if any(image is None for image in self.images):
            return
        box = self.boundingRect()
        w, h = box.width(), box.height()
        cut = (w if self.vertical else h) * self.split
        parts = ((QRectF(0, 0, cut, h), QRectF(cut, 0, w - cut, h)) if self.vertical
                 else (QRectF(0, 0, w, cut), QRectF(0, cut, w, h - cut)))
        background = self.canvas.canvasColor()
        for image, part in zip(self.images, parts):
            painter.save()
            painter.setClipRect(part)
            painter.fillRect(part, background)
            painter.drawImage(QRectF(0, 0, w, h), image)
            painter.restore()
        painter.setPen(QPen(QColor(255, 255, 255), 3))
        line = ((QPointF(cut, 0), QPointF(cut, h)) if self.vertical else (QPointF(0, cut), QPointF(w, cut)))
        painter.drawLine(*line)
        painter.setPen(QPen(QColor(20, 20, 20), 1))
        painter.drawLine(*line)
        self._label(painter, line[0], w, h)

    def _label(self, painter: QPainter, at: QPointF, w: float, h: float) -> None:
        painter.setFont(QFont("Sans", 9))
        first, second = self.labels
        for text, pos, align in ((f"◀ {first}", at + QPointF(-6, 16), Qt.AlignRight),
                                 (f"{second} ▶", at + QPointF(6, 16), Qt.AlignLeft)):
            if not self.vertical:
                pos = QPointF(8, at.y() + (-8 if align == Qt.AlignRight else 18))
            rect = painter.fontMetrics().boundingRect(text)
            x = pos.x() - rect.width() if (align == Qt.AlignRight and self.vertical) else pos.x()
            box = QRectF(x - 3, pos.y() - rect.height() + 2, rect.width() + 6, rect.height() + 2)
            painter.fillRect(box, QColor(255, 255, 255, 200))
            painter.drawText(QPointF(x, pos.y()), text)

    def remove(self) -> None:
        """Detach from the canvas (stop listening, drop from the scene)."""
        try:
            self.canvas.mapCanvasRefreshed.disconnect(self.refresh)
        except TypeError:
            pass
        for job in self.jobs:
            if job is not None:
                job.cancel()
        self.jobs = [None, None]
        self.canvas.scene().removeItem(self)


class SwipeTool(QgsMapTool):
    """Drag (or click) on the canvas to move the swipe line."""

    def __init__(self, canvas: QgsMapCanvas, item: SwipeItem) -> None:
        super().__init__(canvas)
        self.item = item
        self.pressed = False
        self.setCursor(Qt.SplitHCursor)

    def canvasPressEvent(self, event) -> None:  # noqa: N802
        self.pressed = True
        self.item.set_split(event.pos().x(), event.pos().y())

    def canvasMoveEvent(self, event) -> None:  # noqa: N802
        if self.pressed:
            self.item.set_split(event.pos().x(), event.pos().y())

    def canvasReleaseEvent(self, event) -> None:  # noqa: N802
        self.pressed = False
