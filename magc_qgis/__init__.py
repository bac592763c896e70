"""MAGC for QGIS: a plugin that is only glue over the ``magc`` codec library.

Importing this package must work without torch or magc installed (QGIS then shows the
dependency check instead of a traceback), so nothing heavy is imported here: only the
plugin's own ``deps/`` folder and a vendored ``ext/magc`` are put on ``sys.path``.
"""
from __future__ import annotations

from .paths import setup_environment

setup_environment()


def classFactory(iface):  # noqa: N802 (QGIS's name)
    """QGIS entry point; ``iface`` is None under qgis_process."""
    from .plugin import MagcPlugin

    return MagcPlugin(iface)
