"""The plugin's settings in QgsSettings (``magc/...``): one accessor per key, typed.

Also remembers, per map fingerprint, which layers and class assignments made that map, so
that *Decompress…* can pre-select them for a file encoded in this QGIS.
"""
from __future__ import annotations

import json

from qgis.core import QgsSettings

PREFIX = "magc/"


def _get(key: str, default: str = "") -> str:
    value = QgsSettings().value(PREFIX + key, default)
    return "" if value is None else str(value)


def _set(key: str, value: str) -> None:
    QgsSettings().setValue(PREFIX + key, value)


def default_device() -> str:
    return _get("device", "auto") or "auto"


def set_default_device(device: str) -> None:
    _set("device", device)


def weights_folder() -> str:
    """A folder (or file) searched first for MAGC weights; empty: the library's search path."""
    return _get("weights_folder")


def set_weights_folder(path: str) -> None:
    _set("weights_folder", path)


def sd_folder() -> str:
    """Local diffusers folder of Stable Diffusion 2.1-base (for the *-sd21 presets)."""
    return _get("sd_folder")


def set_sd_folder(path: str) -> None:
    _set("sd_folder", path)


def cuda_count() -> int | None:
    """GPUs found the last time they were counted (None: never); enumerating them with torch
    is slow at QGIS start-up, so the count is remembered."""
    try:
        return int(_get("cuda_count"))
    except ValueError:
        return None


def set_cuda_count(count: int) -> None:
    _set("cuda_count", str(count))


def class_assignment(layer_source: str) -> str | None:
    """The class assignment last chosen for a layer source, or None."""
    value = _get("assignment/" + _key(layer_source))
    return value or None


def set_class_assignment(layer_source: str, assignment: str) -> None:
    _set("assignment/" + _key(layer_source), assignment or "auto")


def remember_map(fingerprint: str, layers: list[tuple[str, str]]) -> None:
    """Layers (source, assignment) whose map has ``fingerprint`` (hex)."""
    _set("maps/" + fingerprint, json.dumps(layers))


def remembered_map(fingerprint: str) -> list[tuple[str, str]] | None:
    text = _get("maps/" + fingerprint)
    if not text:
        return None
    try:
        return [(str(s), str(a)) for s, a in json.loads(text)]
    except (ValueError, TypeError):
        return None


def _key(text: str) -> str:
    """QSettings keys must not contain '/' or '\\' beyond grouping: hash the source."""
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:16]
