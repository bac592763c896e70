"""Where the plugin's own files live, and the import path it adds at load.

Layout of an installed plugin (``make package``)::

    magc_qgis/            the plugin code
      ext/magc/           vendored copy of the codec library (matches this plugin version)
      deps/               packages installed by the dependency installer (created on demand)
      resources/          icon, embedded default weights (weights/lite.safetensors)

In a development checkout ``ext/`` is absent and ``magc`` is the installed editable package;
the icon and weights are then found in the repository's ``resources/``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
EXT_DIR = PLUGIN_DIR / "ext"
DEPS_DIR = PLUGIN_DIR / "deps"


def resources_dir() -> Path:
    """The plugin's ``resources/`` (packaged) or the repository's (checkout)."""
    packaged = PLUGIN_DIR / "resources"
    return packaged if packaged.is_dir() else PLUGIN_DIR.parent / "resources"


def icon_path(name: str = "icon.png") -> str:
    return str(resources_dir() / name)


def embedded_weights_dir() -> Path:
    return resources_dir() / "weights"


def setup_environment() -> None:
    """Vendored magc first (it must match the plugin), deps/ last (QGIS's numpy must win).

    ``MAGC_WEIGHTS`` is set (unless the user set it) so that the vendored library finds the
    embedded default weights, which no longer sit at its own ``../resources/weights``.
    """
    if EXT_DIR.is_dir() and str(EXT_DIR) not in sys.path:
        sys.path.insert(0, str(EXT_DIR))
    if DEPS_DIR.is_dir() and str(DEPS_DIR) not in sys.path:
        sys.path.append(str(DEPS_DIR))
    packaged = PLUGIN_DIR / "resources" / "weights"  # in a checkout the library finds ../resources itself
    if packaged.is_dir():
        os.environ.setdefault("MAGC_WEIGHTS", str(packaged))
