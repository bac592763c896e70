"""Finding, loading and identifying a codec's weights.

Search order for a preset's weights file (``preset.weights``): an explicit path (file or
folder), ``$MAGC_WEIGHTS`` (a folder), the project's ``resources/weights/`` (the embedded
default ships there), then the user's data folder (``$XDG_DATA_HOME/magc/weights``, where
the QGIS plugin stores downloaded weights).

Stable-Diffusion presets can also start from a local diffusers folder of SD 2.1-base
(``sd_weights``) or the Hugging Face cache; those weights are the frozen VAE and the UNet to
fine-tune, so a codec built that way is *untrained* until MAGC weights are loaded on top.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import PresetConfig, load_preset
from ..errors import InputError, UntrainedModelError, UsageError
from .weights import load_into, load_state, preset_of, read_metadata, state_hash

REPO_WEIGHTS = Path(__file__).resolve().parents[3] / "resources" / "weights"


def user_weights_dir() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "magc" / "weights"


def weights_search_path(explicit: str | Path | None = None) -> list[Path]:
    paths = []
    if explicit:
        paths.append(Path(explicit))
    if os.environ.get("MAGC_WEIGHTS"):
        paths.append(Path(os.environ["MAGC_WEIGHTS"]))
    return paths + [REPO_WEIGHTS, user_weights_dir()]


def find_weights(preset: PresetConfig, explicit: str | Path | None = None) -> Path | None:
    if explicit and Path(explicit).is_file():
        return Path(explicit)
    if explicit and not Path(explicit).exists():
        raise InputError(f"weights not found: {explicit}")
    for folder in weights_search_path(explicit):
        candidate = folder / preset.weights
        if preset.weights and candidate.is_file():
            return candidate
    return None


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {name} requested but no CUDA GPU is available (use --device cpu)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"device {name} does not exist ({torch.cuda.device_count()} CUDA GPUs found)")
        return torch.device(f"cuda:{index}")
    raise UsageError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")


def build_codec(preset: PresetConfig) -> nn.Module:
    if preset.method == "magc":
        from .codec import MagcCodec

        return MagcCodec(preset)
    if preset.method == "sprdiff":
        from .sprdiff import SprdiffCodec

        return SprdiffCodec(preset)
    raise InputError(f"unknown method {preset.method!r} in preset {preset.name}")


@dataclass
class LoadedCodec:
    codec: nn.Module
    preset: PresetConfig
    weights_hash: bytes
    trained: bool
    source: str
    device: torch.device


def load_codec(
    preset: str | PresetConfig = "lite",
    weights: str | Path | None = None,
    device: str = "auto",
    allow_untrained: bool = False,
    sd_weights: str | Path | None = None,
    seed: int = 0,
) -> LoadedCodec:
    """Build the codec of a preset and load its weights; refuse untrained ones unless allowed."""
    config = preset if isinstance(preset, PresetConfig) else load_preset(preset)
    path = find_weights(config, weights)
    if path is not None:
        config = preset_of(path)
        codec = build_codec(config)
        load_into(codec, load_state(path))
        meta = read_metadata(path)
        trained = meta.get("trained") == "true"
        source = f"{path} ({meta.get('source', '')})"
    else:
        torch.manual_seed(seed)
        codec = build_codec(config)
        trained = False
        source = "random initialisation"
        if config.needs_sd_weights or sd_weights:
            from .sd_loading import load_stable_diffusion

            source = load_stable_diffusion(codec, config, sd_weights) or source
    if not trained and not allow_untrained:
        where = ", ".join(str(p) for p in weights_search_path(weights))
        raise UntrainedModelError(
            f"preset {config.name!r} has no trained weights (looked for {config.weights} in {where}); "
            "its output would be random. Train or convert weights, or pass --allow-untrained to test the pipeline"
        )
    codec.eval()
    codec.requires_grad_(False)
    digest = state_hash(codec)
    target = resolve_device(device)
    codec.to(target)
    if target.type == "cpu":
        # oneDNN's CPU convolutions are faster on NHWC: the lite decoder's autoencoder
        # 0.79 -> 0.61 s and its 2 denoiser steps 0.37 -> 0.27 s per 1152 px window. Hashing
        # and saving take contiguous copies, and the entropy nets evaluate their own copies.
        codec.to(memory_format=torch.channels_last)
    codec.lcm.prepare_coding()
    return LoadedCodec(codec, config, digest, trained, source, target)
