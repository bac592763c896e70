"""Preset configurations: every codec is built from one of these, and they are plain data.

A preset is a JSON file in ``magc/presets/`` (or any path); ``load_preset`` turns it into a
``PresetConfig``. Nothing about a preset is hidden in code paths keyed on its name.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class MapConfig:
    """What the networks see of the map.

    ``classes``: a class map (see ``map_layers.CLASS_SCHEMA``) fed as per-class area fractions at
    1/8 resolution. ``rgb``: a rendered map raster in [0, 1] at full resolution (the official
    MAGC checkpoint was trained on rendered OpenStreetMap tiles). ``none``: the method uses no
    map (SPRDiff); map layers given to it are ignored.
    """

    kind: str = "classes"
    num_classes: int = 5


@dataclass
class AutoencoderConfig:
    """``lite``: this project's pixel-shuffle autoencoder. ``sd-vae``: diffusers AutoencoderKL.

    ``encoder_widths`` / ``encoder_blocks`` give the lite encoder its own size (default: the
    decoder's ``widths`` / ``blocks``): the encoder runs once per pixel at encode time and
    only has to find the latent, so a small one distilled from a large one
    (``train/distill.py``) keeps the decoder's quality at a fraction of the encode time.
    """

    kind: str = "lite"
    latent_channels: int = 8
    widths: list[int] = field(default_factory=lambda: [64, 128])
    blocks: int = 2
    encoder_widths: list[int] | None = None
    encoder_blocks: int | None = None
    decoder_map_classes: int = 0  # lite: > 0 lets the decoder read the class map (0: no map input)
    scaling_factor: float = 1.0
    vae: dict[str, Any] = field(default_factory=dict)


@dataclass
class LCMConfig:
    """Latent Compression Module (hyperprior + channel-wise context, SPADE map conditioning).

    ``analysis_width`` / ``analysis_blocks`` give the analysis transform g_a its own size
    (default: ``N`` / ``blocks``): like the autoencoder's encoder it runs only at encode time,
    on every pixel of the halo too, and only has to find the y that the rest was trained on,
    so a small one distilled from the trained one (``train/distill.py``) keeps the decoder.
    """

    N: int = 128
    M: int = 64
    hyper_channels: int = 64
    slices: int = 8
    context_widths: list[int] = field(default_factory=lambda: [128, 64, 32, 16])
    map_features: int = 192
    map_encoder: str = "official-rgb"  # or "class-fractions"
    blocks: int = 2
    norm: str = "layer"
    official_dead_branch: bool = True
    entropy_net: str = "float64"  # or "exact"
    scale_table: list[float] = field(default_factory=lambda: [0.11, 256.0, 64])
    bottleneck_init_scale: float = 10.0  # compressai's default; smaller suits small hyper-latents
    analysis_width: int | None = None
    analysis_blocks: int | None = None


@dataclass
class AdapterConfig:
    """Semantic Adapter Module: map (+ noisy latent) -> features added inside the UNet encoder.

    ``injection`` lists (down_block, resnet) pairs whose *input* receives each feature.
    ``official_level_loop`` reproduces the official level loop (body.2 and body.4 run twice,
    body.7/8 never run) so that the released checkpoint computes what it computed.
    """

    kind: str = "official-xl"  # or "lite"
    widths: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280])
    map_widths: list[int] = field(default_factory=lambda: [64, 128, 192])
    injection: list[list[int]] = field(default_factory=lambda: [[0, 0], [1, 1], [2, 1], [3, 0]])
    feature_scale: float = 0.18215
    official_level_loop: bool = True


@dataclass
class DenoiserConfig:
    """Conditional denoiser: a diffusers UNet whose input is cat[z_t, z~] plus adapter features."""

    kind: str = "unet2d-condition"  # or "unet2d"
    unet: dict[str, Any] = field(default_factory=dict)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    prediction_type: str = "epsilon"
    context_tokens: int = 77
    context_dim: int = 1024


@dataclass
class SamplerConfig:
    """Which diffusers scheduler samples, with how many steps, from which noise level.

    ``strength`` 1.0 starts from pure noise (official); below 1.0 starts from z~ noised to
    that fraction of the schedule; 0.0 returns z~ itself (no denoiser evaluation).
    ``timesteps`` fixes the exact respaced steps when given.
    ``eta`` 1.0 is ancestral DDPM ("fixed_small" variance), 0.0 deterministic DDIM.
    """

    scheduler: str = "DDPMScheduler"
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    steps: int = 50
    timesteps: list[int] | None = None
    strength: float = 1.0
    eta: float = 1.0


@dataclass
class TilingConfig:
    """Core tile size, context halo and blend half-width, in pixels (multiples of 64/32)."""

    tile: int = 512
    halo: int = 64
    blend: int = 16


@dataclass
class RateConfig:
    """One operating point: the initial quantisation gain and the training lambda."""

    gain: float = 1.0
    lmbda: float = 1.0


@dataclass
class SprdiffConfig:
    """SPRDiff's extra parts (see ``models/sprdiff.py`` and docs/sprdiff.md for the choices).

    ``distortion_widths``: the learned-codec analysis transform (conv5x5 s2 + GDN) down to
    1/8; ``semantic_levels``: which EfficientNet-Lite0 pyramid levels (0..3 = strides
    4..32) the semantic encoder contributes at 1/8; ``fusion_channels``: width after fusing
    the three encoders; ``pixel_channels``: the DARM's pixel-level condition (concatenated
    to the UNet input); ``semantic_widths``: the DARM's semantic conditions, one per UNet
    injection point (``denoiser.adapter.injection``).
    """

    distortion_widths: list[int] = field(default_factory=lambda: [64, 96])
    semantic_levels: list[int] = field(default_factory=lambda: [1, 2])
    fusion_channels: int = 64
    pixel_channels: int = 8
    semantic_widths: list[int] = field(default_factory=lambda: [32, 32, 64])


@dataclass
class PresetConfig:
    name: str
    description: str = ""
    map: MapConfig = field(default_factory=MapConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    lcm: LCMConfig = field(default_factory=LCMConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    rates: list[RateConfig] = field(default_factory=lambda: [RateConfig()])
    default_rate: int = 0
    weights: str = ""
    needs_sd_weights: bool = False
    method: str = "magc"
    sprdiff: SprdiffConfig = field(default_factory=SprdiffConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any]) -> Any:
    """Recursively build nested dataclasses; unknown keys are an error, not silently dropped."""
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            raise UsageError(f"unknown preset key {key!r} for {cls.__name__}")
        sub = _NESTED.get((cls.__name__, key))
        if sub is not None and isinstance(value, dict):
            value = _build(sub, value)
        elif sub is not None and isinstance(value, list):
            value = [_build(sub, v) for v in value]
        kwargs[key] = value
    return cls(**kwargs)


_NESTED = {
    ("PresetConfig", "map"): MapConfig,
    ("PresetConfig", "autoencoder"): AutoencoderConfig,
    ("PresetConfig", "lcm"): LCMConfig,
    ("PresetConfig", "denoiser"): DenoiserConfig,
    ("PresetConfig", "sampler"): SamplerConfig,
    ("PresetConfig", "tiling"): TilingConfig,
    ("PresetConfig", "rates"): RateConfig,
    ("DenoiserConfig", "adapter"): AdapterConfig,
    ("PresetConfig", "sprdiff"): SprdiffConfig,
}


def preset_from_dict(data: dict[str, Any]) -> PresetConfig:
    return _build(PresetConfig, data)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name_or_path: str | Path) -> PresetConfig:
    """A built-in preset by name, or a preset JSON file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise UsageError(f"unknown preset {str(name_or_path)!r}; available: {', '.join(available_presets())}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read preset {path}: {exc}") from exc
    return preset_from_dict(data)
