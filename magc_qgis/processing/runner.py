"""The bridge between a QGIS feedback and the library: progress, cancel, errors, device.

Every algorithm calls the library inside ``library_call``; that is where a library error
becomes a ``QgsProcessingException`` with the library's one-line message plus what to do
in QGIS, and where a cancel becomes an exception (a cancelled feedback alone does not make
``processing.run`` fail).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

from qgis.core import QgsProcessingException, QgsProcessingFeedback

from .. import deps

# What to do in QGIS, by library error class name (the library's messages name CLI flags).
HINTS = {
    "UntrainedModelError": "Install the trained weights (Settings…), or tick 'Allow untrained weights (testing only)'.",
    "MapMismatchError": "Select the same map layers and class assignments used when compressing "
                        "(or tick 'Decode even if the map differs').",
    "ModelMismatchError": "Choose the weights file the raster was compressed with (Weights, in the advanced parameters).",
    "FormatError": "The .magc file is damaged or not a MAGC file; compress the original again.",
}


def _version(distribution: str) -> str:
    return deps.installed_version(distribution) or "?"


def require_library() -> None:
    """Raise a clear error (not an ImportError traceback) when dependencies are missing."""
    missing = deps.full_check()
    if missing:
        raise QgsProcessingException(deps.missing_text(missing))


class FeedbackBridge:
    """``progress(fraction, message)`` and ``cancel()`` callables for the library.

    Progress text is forwarded only when the kind of step changes (not once per tile), so
    the log stays readable; ``span`` maps the library's 0..1 into part of the bar (batch).
    """

    def __init__(self, feedback: QgsProcessingFeedback | None, span: tuple[float, float] = (0.0, 1.0)) -> None:
        self.feedback = feedback
        self.span = span
        self._last_kind = ""
        self._last_time = 0.0

    def progress(self, fraction: float, message: str) -> None:
        if self.feedback is None:
            return
        start, end = self.span
        self.feedback.setProgress(100.0 * (start + (end - start) * fraction))
        kind = message.split(" ")[0]
        now = time.monotonic()
        if kind != self._last_kind or now - self._last_time > 30:
            self.feedback.setProgressText(message)
            self._last_kind, self._last_time = kind, now

    def cancel(self) -> bool:
        return self.feedback is not None and self.feedback.isCanceled()

    def callbacks(self) -> dict[str, Callable]:
        return {"progress": self.progress, "cancel": self.cancel}


@contextmanager
def library_call(feedback: QgsProcessingFeedback | None, what: str) -> Iterator[None]:
    """Run library code; turn cancel and library errors into QgsProcessingException."""
    from magc.errors import Cancelled, MagcError

    try:
        yield
    except Cancelled as exc:
        raise QgsProcessingException(f"{what} cancelled; no partial file was left") from exc
    except MagcError as exc:
        hint = HINTS.get(type(exc).__name__, "")
        raise QgsProcessingException(f"{what} failed: {exc}" + (f"\n{hint}" if hint else "")) from exc
    except Exception as exc:  # two environment problems a user can fix, explained; anything else is a bug
        text = str(exc)
        if "out of memory" in text.lower():  # torch.cuda.OutOfMemoryError
            raise QgsProcessingException(f"{what} failed: the device ran out of memory. Choose another device "
                                         "(Device: cpu) or close what else uses the GPU.") from exc
        if "WKB output dimension" in text:  # shapely >= 2.1 calling the GEOS < 3.12 that QGIS links
            raise QgsProcessingException(
                f"{what} failed: shapely {_version('shapely')} does not work with the GEOS library of this QGIS "
                f"({text}). Install shapely<2.1 for QGIS's Python (the MAGC dependency installer pins it).") from exc
        raise


def log_codec(feedback: QgsProcessingFeedback | None, loaded) -> None:
    """Say which device and which weights did the work (users asked for exactly that)."""
    if feedback is None:
        return
    feedback.pushInfo(f"Device: {loaded.device}")
    feedback.pushInfo(f"Model: {loaded.preset.name}, weights: {loaded.source}" + ("" if loaded.trained else " (UNTRAINED)"))
    if not loaded.trained:
        feedback.pushWarning("These weights are untrained: the reconstruction will not resemble the input.")


_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()


def _cache_key(preset: str, options: dict) -> tuple:
    """What identifies a loaded codec, including the weights file's time stamp (a newly
    installed file must be picked up)."""
    from magc.config import load_preset
    from magc.models.loading import find_weights

    try:
        path = find_weights(load_preset(preset), options.get("weights"))
    except Exception:  # reported properly by the real load below
        path = None
    stamp = (str(path), os.path.getmtime(path)) if path else None
    return (preset, options.get("weights"), options.get("sd_weights"), options.get("device", "auto"), stamp)


@contextmanager
def codec_for(options: dict, feedback: QgsProcessingFeedback | None, preset: str | None = None) -> Iterator:
    """The codec for a run, loaded once and kept for the next run with the same model.

    A cached codec is taken out of the cache while a run uses it, so two runs at once
    never share one (the second loads its own); the last one used is kept.
    """
    from magc.models.loading import load_codec as load

    preset = preset or options["preset"]
    key = _cache_key(preset, options)
    with _CACHE_LOCK:
        loaded = _CACHE.pop(key, None)
    if loaded is not None and not loaded.trained and not options.get("allow_untrained"):
        loaded = None  # the real load below refuses it with the library's message
    if loaded is None:
        with library_call(feedback, "Loading the model"):
            loaded = load(preset, options.get("weights"), options.get("device", "auto"),
                          options.get("allow_untrained", False), sd_weights=options.get("sd_weights"))
    log_codec(feedback, loaded)
    try:
        yield loaded
    finally:
        with _CACHE_LOCK:
            _CACHE.clear()
            _CACHE[key] = loaded


def release_codecs() -> None:
    """Forget cached models (plugin unload): frees their memory, on the GPU too."""
    with _CACHE_LOCK:
        had = bool(_CACHE)
        _CACHE.clear()
    torch = sys.modules.get("torch")
    if had and torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
