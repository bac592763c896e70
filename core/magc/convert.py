"""Convert the released MAGC checkpoint (PyTorch Lightning, LDM names) into ``magc-sd21`` weights.

::

    v40_step=120999-lpips=0.3132.ckpt ──safe_load_checkpoint──> official state dict (1850 keys)
        model.diffusion_model.*  ──diffusers' LDM converter──> denoiser.unet.*      (686)
        first_stage_model.*      ──diffusers' LDM converter──> autoencoder.vae.*    (248)
        control_model.*          ──rename──────────────────> denoiser.adapter.*   (70)
        hyper_encoder.*          ──rename──────────────────> lcm.*                (532; 6 CDF tables rebuilt, scale table from preset)
        cond_stage_model.*       ──empty-prompt forward────> denoiser.context     (294 -> 1 tensor)
        13 DDPM buffers          ──ignored (betas checked against the preset's schedule)

The checkpoint is a pickle, never unpickled with arbitrary globals (``safe_checkpoint``); the
text tower's empty-prompt forward is ``text_context``.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import PresetConfig, load_preset
from .errors import InputError
from .safe_checkpoint import load_checkpoint_state
from .text_context import empty_prompt_context

# -- official checkpoint layout ------------------------------------------------------------
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
ADAPTER_PREFIX = "control_model."
LCM_PREFIX = "hyper_encoder."
OFFICIAL_PREFIXES = (UNET_PREFIX, VAE_PREFIX, "cond_stage_model.", ADAPTER_PREFIX, LCM_PREFIX)

DDPM_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar",
)
# Not in the official state dict, but harmless if a checkpoint carries them.
EXTRA_DIFFUSION_ATTRS = ("lvlb_weights", "scale_factor")

CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")
# Model keys that are deliberately left out of the converted state and rebuilt by update().
REBUILT_KEYS = tuple(
    f"lcm.{owner}.{name}" for owner in ("entropy_bottlenecks.0", "gaussian_conditional") for name in CDF_BUFFERS
)
MAP_ENCODER_PARTS = ("sem_encoder", "sem_conv1", "sem_conv2")
_EB_OLD_NAME = re.compile(r"^_(matrix|bias|factor)(\d+)$")
_EB_NEW_NAME = {"matrix": "matrices", "bias": "biases", "factor": "factors"}

BETA_TOLERANCE = 1e-6


# == loading ===============================================================================
def check_official_keys(state: Mapping[str, Tensor], name: str = "checkpoint") -> None:
    """Refuse a state dict that lacks any of the five parts of the official model."""
    missing = [p for p in OFFICIAL_PREFIXES if not any(k.startswith(p) for k in state)]
    if missing:
        found = sorted({k.split(".", 1)[0] for k in state})
        raise InputError(
            f"{name}: not a MAGC checkpoint: no {', '.join(p + '*' for p in missing)} keys "
            f"({len(state)} tensors, top-level names: {', '.join(found[:8])})"
        )


def safe_load_checkpoint(path: str | Path, require_official: bool = True) -> dict[str, Tensor]:
    """The state dict of a (Lightning) checkpoint, loaded without running pickled code."""
    state = load_checkpoint_state(path)
    if require_official:
        check_official_keys(state, Path(path).name)
    return state


# == conversion =============================================================================
@dataclass
class ConversionReport:
    """What happened to every official key, and what the converted state adds."""

    mapped: dict[str, str] = field(default_factory=dict)  # official key -> model key
    ignored: dict[str, str] = field(default_factory=dict)  # official key -> reason
    derived: dict[str, str] = field(default_factory=dict)  # model key -> how it was made
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def mapped_count(self) -> int:
        return len(self.mapped)

    def summary(self) -> str:
        lines = [
            f"official keys: {len(self.mapped) + len(self.ignored)}; mapped {len(self.mapped)}, "
            f"ignored {len(self.ignored)}, derived {len(self.derived)} model tensors",
        ]
        reasons: dict[str, int] = {}
        for reason in self.ignored.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"  ignored {count:4d}: {reason}" for reason, count in reasons.items()]
        lines += [f"  derived {key}: {how}" for key, how in self.derived.items()]
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"WARNING: {warning}" for warning in self.warnings]
        return "\n".join(lines)

    def manifest(self) -> dict[str, Any]:
        """A compact record saved in the weights file's metadata."""
        return {
            "mapped": len(self.mapped), "ignored": len(self.ignored), "derived": sorted(self.derived),
            "notes": self.notes, "warnings": self.warnings,
        }


def diffusers_names(keys: Mapping[str, int], converter: Callable, config: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Run one of diffusers' LDM converters on probe tensors: diffusers key -> (LDM key, ndim).

    Each probe holds its key's index in a [1]*ndim tensor, so the converter's renames and its
    conv->linear squeezes come out without touching (or materialising) the real weights.
    """
    names = list(keys)
    probe = {key: torch.full([1] * keys[key], float(i), dtype=torch.float64) for i, key in enumerate(names)}
    result = {}
    for new_key, tensor in converter(probe, config).items():
        if not isinstance(tensor, Tensor) or tensor.numel() != 1:
            raise InputError(f"the checkpoint lacks the tensor for {new_key} (diffusers' LDM converter found none)")
        result[new_key] = (names[int(tensor.item())], tensor.dim())
    return result


def _squeeze_to(tensor: Tensor, ndim: int) -> Tensor:
    """Drop trailing singleton dims (diffusers' ``w[:, :, 0, 0]`` for 1x1-conv attention)."""
    while tensor.dim() > ndim:
        tensor = tensor[..., 0]
    return tensor


def _as_float32(tensor: Tensor) -> Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


def _convert_diffusers_part(
    official: Mapping[str, Tensor], prefix: str, target: str, converter: Callable, config: dict[str, Any],
    what: str, state: dict[str, Tensor], report: ConversionReport,
) -> None:
    keys = {k: official[k].dim() for k in official if k.startswith(prefix)}
    for new_key, (old_key, ndim) in diffusers_names(keys, converter, config).items():
        state[f"{target}.{new_key}"] = _as_float32(_squeeze_to(official[old_key], ndim))
        report.mapped[old_key] = f"{target}.{new_key}"
    for old_key in keys:
        if old_key not in report.mapped:
            report.ignored[old_key] = f"not used by diffusers' {what} converter"
            report.warnings.append(f"{old_key} is not used by diffusers' {what} converter")


def _unet_part(official: dict[str, Tensor], preset: PresetConfig, state: dict[str, Tensor], report: ConversionReport) -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    channels = int(preset.denoiser.unet.get("in_channels", 8))
    if conv_in in official and official[conv_in].dim() == 4 and official[conv_in].shape[1] > channels:
        report.notes.append(
            f"{conv_in} sliced from {official[conv_in].shape[1]} to {channels} input channels (as the official loader does)"
        )
        official = {**official, conv_in: official[conv_in][:, :channels]}
    _convert_diffusers_part(
        official, UNET_PREFIX, "denoiser.unet", convert_ldm_unet_checkpoint, preset.denoiser.unet, "UNet", state, report
    )


def _vae_part(official: dict[str, Tensor], preset: PresetConfig, state: dict[str, Tensor], report: ConversionReport) -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    _convert_diffusers_part(
        official, VAE_PREFIX, "autoencoder.vae", convert_ldm_vae_checkpoint, preset.autoencoder.vae, "VAE", state, report
    )


def lcm_key(official_key: str) -> str:
    """``hyper_encoder.*`` -> ``lcm.*``: map-encoder parts, one entropy bottleneck, new compressai names."""
    rest = official_key[len(LCM_PREFIX):]
    head, _, tail = rest.partition(".")
    if head in MAP_ENCODER_PARTS:
        return f"lcm.map_encoder.{rest}"
    if head == "entropy_bottleneck":
        match = _EB_OLD_NAME.match(tail)
        if match:
            tail = f"{_EB_NEW_NAME[match[1]]}.{match[2]}"
        return f"lcm.entropy_bottlenecks.0.{tail}"
    return f"lcm.{rest}"


def _lcm_part(official: dict[str, Tensor], preset: PresetConfig, state: dict[str, Tensor], report: ConversionReport) -> None:
    from .models.lcm import scale_table

    for key, tensor in official.items():
        if not key.startswith(LCM_PREFIX):
            continue
        head, _, tail = key[len(LCM_PREFIX):].partition(".")
        if head in ("entropy_bottleneck", "gaussian_conditional") and tail in CDF_BUFFERS:
            report.ignored[key] = "entropy-coder table: rebuilt with update() after loading"
        elif head == "gaussian_conditional" and tail == "scale_table":
            report.ignored[key] = "Gaussian scale table: taken from the preset (checked)"
        else:
            state[lcm_key(key)] = _as_float32(tensor)
            report.mapped[key] = lcm_key(key)
    table = torch.tensor(scale_table(*preset.lcm.scale_table), dtype=torch.float32)
    state["lcm.gaussian_conditional.scale_table"] = table
    report.derived["lcm.gaussian_conditional.scale_table"] = f"preset scale table {preset.lcm.scale_table}"
    theirs = official.get(LCM_PREFIX + "gaussian_conditional.scale_table")
    if theirs is not None and theirs.numel() and (
        theirs.shape != table.shape or not torch.allclose(theirs.float(), table, rtol=1e-5, atol=0)
    ):
        report.warnings.append("the checkpoint's Gaussian scale table differs from the preset's; the preset's is used")
    rates, M, Mz = len(preset.rates), preset.lcm.M, preset.lcm.hyper_channels
    state["lcm.log_gains"] = torch.zeros(rates, M)
    state["lcm.log_hyper_gains"] = torch.zeros(rates, Mz)
    report.derived["lcm.log_gains"] = "zeros (gain 1: the official model has no quantisation gains)"
    report.derived["lcm.log_hyper_gains"] = "zeros (gain 1)"


def _adapter_part(official: dict[str, Tensor], state: dict[str, Tensor], report: ConversionReport) -> None:
    for key, tensor in official.items():
        if key.startswith(ADAPTER_PREFIX):
            new_key = "denoiser.adapter." + key[len(ADAPTER_PREFIX):]
            state[new_key] = _as_float32(tensor)
            report.mapped[key] = new_key


def _text_part(official: dict[str, Tensor], preset: PresetConfig, state: dict[str, Tensor], report: ConversionReport) -> None:
    try:
        context = empty_prompt_context(official, TEXT_PREFIX)
    except KeyError as exc:
        raise InputError(f"the checkpoint's text encoder is incomplete: no {exc.args[0]}") from exc
    expected = (1, preset.denoiser.context_tokens, preset.denoiser.context_dim)
    if tuple(context.shape) != expected:
        raise InputError(f"the checkpoint's text encoder gives a {tuple(context.shape)} context; the preset needs {expected}")
    state["denoiser.context"] = context
    report.derived["denoiser.context"] = "empty-prompt OpenCLIP embedding (penultimate layer) from cond_stage_model.*"
    for key in official:
        if key.startswith("cond_stage_model."):
            report.ignored[key] = "OpenCLIP text tower: only its empty-prompt output is kept (denoiser.context)"


def schedule_warning(betas: Tensor, preset: PresetConfig) -> str | None:
    """Why the checkpoint's betas disagree with the preset's scheduler, or None when they agree."""
    from diffusers import DDPMScheduler

    ours = DDPMScheduler(**preset.sampler.scheduler_config).betas.double()
    theirs = betas.detach().double().flatten()
    if theirs.shape != ours.shape:
        return f"the checkpoint has {theirs.numel()} betas, the preset's schedule {ours.numel()}"
    error = float((theirs - ours).abs().max())
    if not math.isfinite(error) or error > BETA_TOLERANCE:
        return f"the checkpoint's betas differ from the preset's schedule by up to {error:.3g}"
    return None


def _ddpm_part(official: dict[str, Tensor], preset: PresetConfig, report: ConversionReport) -> None:
    for key in official:
        if key in DDPM_BUFFERS or key in EXTRA_DIFFUSION_ATTRS:
            report.ignored[key] = "DDPM schedule buffer: the preset's scheduler computes it"
    if "betas" in official:
        warning = schedule_warning(official["betas"], preset)
        if warning:
            report.warnings.append(warning)
    else:
        report.warnings.append("the checkpoint has no betas to check the noise schedule against")


def convert_state_dict(
    official: Mapping[str, Tensor], preset: PresetConfig | None = None,
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Official state dict -> ``MagcCodec`` state dict (without the rebuilt CDF tables) + report.

    Tensors are not copied where a view suffices, so a memory-mapped checkpoint stays mapped.
    """
    preset = preset or load_preset("magc-sd21")
    official = dict(official)
    check_official_keys(official)
    state: dict[str, Tensor] = {}
    report = ConversionReport()
    _unet_part(official, preset, state, report)
    _vae_part(official, preset, state, report)
    _lcm_part(official, preset, state, report)
    _adapter_part(official, state, report)
    _text_part(official, preset, state, report)
    _ddpm_part(official, preset, report)
    for key in official:
        if key not in report.mapped and key not in report.ignored:
            report.ignored[key] = "unknown key: not part of the MAGC model"
    unknown = [k for k, why in report.ignored.items() if why.startswith("unknown")]
    if unknown:
        report.warnings.append(f"{len(unknown)} unknown keys ignored (e.g. {unknown[:3]})")
    return state, report


# == building and writing ===================================================================
def _empty_codec(preset: PresetConfig) -> nn.Module:
    """The codec with parameters on the meta device (no 4.5 GB random init), else on the CPU.

    ``load_state_dict(assign=True)`` then puts the checkpoint's own tensors in place.
    """
    from .models.codec import MagcCodec

    try:
        with torch.device("meta"):
            return MagcCodec(preset)
    except (RuntimeError, NotImplementedError):
        # A module computes values while it is built (lcm.scale_table calls .item()).
        return MagcCodec(preset)


def load_converted(codec: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Strict load: every model key but the rebuilt CDF tables must come from the checkpoint."""
    try:
        missing, unexpected = codec.load_state_dict(dict(state), strict=False, assign=True)
    except RuntimeError as exc:
        first = [line.strip() for line in str(exc).splitlines() if line.strip()][1:3]
        raise InputError(f"the checkpoint does not fit the preset: {' '.join(first)}") from exc
    missing = [k for k in missing if k not in REBUILT_KEYS]
    if missing or unexpected:
        raise InputError(
            f"the checkpoint does not fit the preset: {len(missing)} model tensors missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def rebuild_entropy_tables(codec: nn.Module, half: bool = False) -> None:
    """Recompute the CDF tables the official loader also discards, from the loaded parameters.

    With ``half`` the bottleneck parameters are first rounded to fp16, as the weights file
    will store them, so that the saved tables match the saved parameters.
    """
    lcm = codec.lcm
    with torch.no_grad():
        for bottleneck in lcm.entropy_bottlenecks:
            if half:
                for param in bottleneck.parameters():
                    param.data = param.data.half().float()
            bottleneck.update(force=True)
        lcm.gaussian_conditional.update()
    on_meta = [k for k, v in codec.state_dict().items() if v.is_meta]
    if on_meta:
        raise RuntimeError(f"tensors left without values after conversion: {on_meta[:5]}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def convert_official(
    ckpt_path: str | Path, out_dir: str | Path, preset_name: str = "magc-sd21", *, half: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Convert the released checkpoint; writes ``<preset>.safetensors`` and ``<preset>.json``.

    ``half`` stores floats as fp16 (the official inference runs under autocast anyway);
    ``log`` receives the conversion report. Returns the weights path.
    """
    from .models.weights import save_weights

    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    preset = load_preset(preset_name)
    official = safe_load_checkpoint(ckpt_path)
    state, report = convert_state_dict(official, preset)
    del official
    codec = _empty_codec(preset)
    load_converted(codec, state)
    del state
    rebuild_entropy_tables(codec, half=half)
    weights = out_dir / (preset.weights or f"{preset.name}.safetensors")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_weights(codec, preset, weights, trained=True, source=f"converted from {ckpt_path.name}",
                     manifest=report.manifest(), half=half)
        _write_json(out_dir / f"{preset.name}.json", preset.to_dict())
    except OSError as exc:
        raise InputError(f"cannot write the converted weights to {out_dir}: {exc}") from exc
    if log is not None:
        log(report.summary())
    return weights
