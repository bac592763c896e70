"""The plugin object QGIS holds: menu Raster > MAGC, a toolbar, the Processing provider.

Loading never imports torch or magc: the actions first check the dependencies (and open
the dependency dialog when something is missing), then open their dialog. ``unload``
removes every action, menu entry, toolbar, dock, canvas item and the provider.
"""
from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QCursor, QIcon
from qgis.PyQt.QtWidgets import QAction, QApplication

from . import deps
from .paths import icon_path
from .processing.provider import MagcProvider
from .processing.runner import release_codecs

MENU = "&MAGC"


class MagcPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: MagcProvider | None = None
        self.actions: list[QAction] = []
        self.toolbar = None
        self.dialogs: dict = {}
        self.compare_dock = None

    # -- Processing (also what qgis_process calls, with iface None) --------------------------
    def initProcessing(self) -> None:  # noqa: N802
        if self.provider is None:
            self.provider = MagcProvider()  # keep the reference: without it the provider vanishes
            QgsApplication.processingRegistry().addProvider(self.provider)

    # -- GUI --------------------------------------------------------------------------------
    def initGui(self) -> None:  # noqa: N802
        self.initProcessing()
        self.toolbar = self.iface.addToolBar("MAGC")
        self.toolbar.setObjectName("MagcToolbar")
        theme = QgsApplication.getThemeIcon
        for text, icon, slot, on_toolbar in (
            ("Compress…", QIcon(icon_path()), self.open_compress, True),
            ("Decompress…", theme("/mActionFileOpen.svg"), self.open_decompress, True),
            ("Compare…", theme("/mActionSplitFeatures.svg"), self.open_compare, True),
            ("Settings…", theme("/mActionOptions.svg"), self.open_settings, False),
        ):
            action = QAction(icon, text, self.iface.mainWindow())
            action.setObjectName("magc_" + text.rstrip("…").lower())
            action.triggered.connect(slot)
            self.iface.addPluginToRasterMenu(MENU, action)
            if on_toolbar:
                self.toolbar.addAction(action)
            self.actions.append(action)

    def unload(self) -> None:
        for run in _running():
            run.cancel()
        if self.compare_dock is not None:
            self.compare_dock.teardown()
            self.iface.removeDockWidget(self.compare_dock)
            self.compare_dock.deleteLater()
            self.compare_dock = None
        for dialog in self.dialogs.values():
            dialog.close()
            dialog.deleteLater()
        self.dialogs.clear()
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            if self.toolbar is not None:
                self.toolbar.removeAction(action)
            action.deleteLater()
        self.actions.clear()
        if self.toolbar is not None:
            self.iface.mainWindow().removeToolBar(self.toolbar)
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        release_codecs()

    # -- actions ----------------------------------------------------------------------------
    def dependencies_ok(self) -> bool:
        """True when everything imports; otherwise show the dependency dialog (no install)."""
        QApplication.setOverrideCursor(QCursor(Qt.WaitCursor))  # the first check imports torch
        try:
            missing = deps.full_check()
        finally:
            QApplication.restoreOverrideCursor()
        if not missing:
            return True
        from .gui.deps_dialog import DepsDialog

        self._show("deps", lambda: DepsDialog(missing, self.iface.mainWindow()), fresh=True)
        return False

    def _show(self, key: str, make, fresh: bool = False):
        if fresh and key in self.dialogs:
            self.dialogs.pop(key).deleteLater()
        if key not in self.dialogs:
            self.dialogs[key] = make()
        dialog = self.dialogs[key]
        dialog.show()
        dialog.raise_()
        return dialog

    def open_compress(self):
        if self.dependencies_ok():
            from .gui.compress_dialog import CompressDialog

            return self._show("compress", lambda: CompressDialog(self.iface), fresh=True)
        return None

    def open_decompress(self):
        if self.dependencies_ok():
            from .gui.decompress_dialog import DecompressDialog

            return self._show("decompress", lambda: DecompressDialog(self.iface), fresh=True)
        return None

    def open_compare(self):
        if not self.dependencies_ok():
            return None
        if self.compare_dock is None:
            from .gui.compare_dock import CompareDock

            self.compare_dock = CompareDock(self.iface)
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.compare_dock)
        self.compare_dock.show()
        self.compare_dock.raise_()
        return self.compare_dock

    def open_settings(self):
        from .gui.settings_dialog import SettingsDialog

        return self._show("settings", lambda: SettingsDialog(self.iface, self.iface.mainWindow()), fresh=True)


def _running():
    from .gui.tasks import running

    return running()
