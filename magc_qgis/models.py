"""What the dialogs say about models and devices: installed or not, where, which GPUs.

These calls import the library (and torch), so they are made when a dialog opens, never at
QGIS start-up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import settings
from .weights_download import read_manifest


@dataclass
class ModelStatus:
    preset: str
    installed: bool  # trained weights were found
    path: str | None
    text: str  # one line for the dialog
    needs_sd_weights: bool
    rates: int
    default_rate: int
    description: str
    downloadable: bool
    bpp_per_rate: dict[int, float] | None = None  # measured, from the weights' manifest


def _explicit() -> str | None:
    folder = settings.weights_folder()
    return folder if folder and os.path.exists(folder) else None


def model_status(name: str) -> ModelStatus:
    from magc.config import load_preset
    from magc.models.loading import find_weights, user_weights_dir, weights_search_path
    from magc.models.weights import measured_bpp, read_metadata

    preset = load_preset(name)
    path = find_weights(preset, _explicit())
    trained = bool(path) and read_metadata(path).get("trained") == "true"
    manifest = read_manifest()
    downloadable = name in manifest and bool(manifest[name].url)
    if trained:
        text = f"installed: {path}"
    elif path:
        text = f"NOT TRAINED: {path} holds untrained weights (testing only)"
    else:
        where = ", ".join(dict.fromkeys(str(p) for p in weights_search_path(_explicit())))
        text = f"NOT INSTALLED: no {preset.weights} in {where}"
        if name in manifest:
            text += "; download it with the button" if downloadable else f"; {manifest[name].note or 'no download yet'}"
            text += f" (goes to {user_weights_dir()})" if downloadable else ""
    return ModelStatus(name, trained, str(path) if path else None, text, preset.needs_sd_weights, len(preset.rates),
                       preset.default_rate, preset.description, downloadable, measured_bpp(path))


def device_labels() -> list[tuple[str, str]]:
    """(device, label) for auto, cpu and each CUDA GPU torch finds (and remember the count)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    settings.set_cuda_count(count)
    auto = f"auto (cuda:0, {torch.cuda.get_device_name(0)})" if count else "auto (CPU: no CUDA GPU found)"
    rows = [("auto", auto), ("cpu", "CPU")]
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        rows.append((f"cuda:{i}", f"cuda:{i} — {props.name} ({props.total_memory / 2**30:.0f} GiB)"))
    return rows
