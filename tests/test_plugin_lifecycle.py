"""The plugin as QGIS loads it: classFactory, initGui, unload (no leaks), and the dependency
check when a dependency is missing (the plugin still loads and says what to install)."""
from __future__ import annotations

import json
import subprocess
import sys

from qgis.core import QgsApplication, QgsProcessingException
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QToolBar

import pytest

from plugin_helpers import REPO, qgis_env

import magc_qgis
from magc_qgis import deps


def magc_toolbars(iface) -> list[QToolBar]:
    return [t for t in iface.mainWindow().findChildren(QToolBar) if t.objectName() == "MagcToolbar"]


def test_class_factory_init_gui_unload_leaves_nothing(qgis_iface, qgis_processing) -> None:
    qgis_iface.addPluginToRasterMenu.reset_mock()
    qgis_iface.removePluginRasterMenu.reset_mock()
    registry = QgsApplication.processingRegistry()
    assert registry.providerById("magc") is None

    plugin = magc_qgis.classFactory(qgis_iface)
    plugin.initGui()
    provider = registry.providerById("magc")
    assert provider is plugin.provider
    assert {a.name() for a in provider.algorithms()} == {
        "encode_raster", "decode_file", "roundtrip", "batch_encode", "baseline", "compare"}
    assert [a.text() for a in plugin.actions] == ["Compress…", "Decompress…", "Compare…", "Settings…"]
    assert qgis_iface.addPluginToRasterMenu.call_count == 4
    assert all(call.args[0] == "&MAGC" for call in qgis_iface.addPluginToRasterMenu.call_args_list)
    assert len(magc_toolbars(qgis_iface)) == 1
    actions = list(plugin.actions)
    settings_dialog = plugin.open_settings()  # a dialog open at unload must go too
    assert settings_dialog.isVisible()

    plugin.unload()
    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)  # run deleteLater
    assert registry.providerById("magc") is None
    assert plugin.actions == [] and plugin.dialogs == {} and plugin.toolbar is None
    removed = [call.args[1] for call in qgis_iface.removePluginRasterMenu.call_args_list]
    assert removed == actions
    assert all(sip.isdeleted(a) for a in actions)
    assert magc_toolbars(qgis_iface) == []
    assert sip.isdeleted(settings_dialog)


def test_init_gui_twice_after_unload(qgis_iface, qgis_processing) -> None:
    """Reloading the plugin (Plugin Reloader, upgrades) registers the provider again."""
    for _ in range(2):
        plugin = magc_qgis.classFactory(qgis_iface)
        plugin.initGui()
        assert QgsApplication.processingRegistry().providerById("magc") is not None
        plugin.unload()
        QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
    assert QgsApplication.processingRegistry().providerById("magc") is None


def test_missing_torch_shows_the_dependency_check(qgis_iface, qgis_processing, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    missing = deps.full_check()
    assert [m.module for m in missing] == ["torch"]
    text = deps.missing_text(missing)
    assert "torch" in text and "--only-binary=:all:" in text and "--target" in text and "--constraint" in text

    plugin = magc_qgis.classFactory(qgis_iface)
    plugin.initGui()  # loads fine
    try:
        assert plugin.open_compress() is None  # refused ...
        dialog = plugin.dialogs["deps"]  # ... with the dependency dialog instead
        assert dialog.isVisible()
        assert "torch" in dialog.summary.text() and "pip" in dialog.summary.text()
        command = dialog.command()
        assert command[1:4] == ["-m", "pip", "install"] and "torch>=2.1" in command
        assert str(deps.DEPS_DIR) in command
        assert not dialog.process  # nothing installed without the user's click
        algorithm = plugin.provider.algorithm("encode_raster")
        assert algorithm.canExecute()[0] is False
        import processing

        with pytest.raises(QgsProcessingException, match="torch"):
            processing.run("magc:decode_file", {"INPUT": "x.magc", "OUTPUT": "x.tif"})
    finally:
        plugin.unload()
        QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)


def test_constraints_keep_qgis_packages() -> None:
    text = deps.constraints_text()
    assert "numpy<2" in text and "GDAL==0.0.0.dev0+never" in text
    assert any(line.startswith("numpy==") for line in text.splitlines())


LOAD_WITHOUT_DEPS = r"""
import json, sys
for name in ("torch", "magc", "diffusers", "compressai"):
    sys.modules[name] = None  # as if not installed
from qgis.core import QgsApplication
app = QgsApplication([], False)
app.initQgis()
import magc_qgis
plugin = magc_qgis.classFactory(None)  # what qgis_process does
plugin.initProcessing()
provider = QgsApplication.processingRegistry().providerById("magc")
algorithm = provider.algorithm("encode_raster")
print(json.dumps({"algorithms": len(provider.algorithms()), "can_execute": algorithm.canExecute(),
                  "presets": algorithm.parameterDefinition("PRESET").options()}))
QgsApplication.processingRegistry().removeProvider(provider)
"""


def test_plugin_loads_without_torch_or_magc(tmp_path) -> None:
    """In a fresh interpreter where torch and magc cannot be imported at all."""
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_DEPS], cwd=REPO, env=qgis_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["algorithms"] == 6
    assert result["can_execute"][0] is False and "torch" in result["can_execute"][1]
    assert result["presets"] == ["lite"]
