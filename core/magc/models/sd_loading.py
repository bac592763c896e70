"""Stable Diffusion 2.1-base as the starting point of the ``*-sd21`` presets.

Reads a local diffusers folder (``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``) or
the Hugging Face cache, never the network unless ``allow_download`` is set. The UNet's
``conv_in`` is widened from 4 to 8 input channels for cat[z_t, z~]; the 4 new channels start
at zero, so the widened UNet initially computes exactly what SD computes. The empty-prompt
text embedding (OpenCLIP ViT-H, penultimate layer, which diffusers' SD 2.x text encoder
already is) is computed once and cached next to the user's weights, so encoding and
decoding never load the 350 M-parameter text encoder again.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import PresetConfig
from ..errors import InputError

HUB_ID = "stabilityai/stable-diffusion-2-1-base"
EMPTY_PROMPT_IDS = [49406, 49407]  # OpenCLIP BOS, EOS; padded with 0 as open_clip.tokenize does


def widen_conv_in(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """conv_in weight with extra zero input channels (the new z~ channels start inert)."""
    out = torch.zeros(weight.shape[0], in_channels, *weight.shape[2:], dtype=weight.dtype)
    out[:, : weight.shape[1]] = weight
    return out


def empty_prompt_embedding(source: str, local_only: bool, tokens: int) -> torch.Tensor:
    """[1, tokens, dim] hidden states of the SD text encoder for the empty prompt."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", local_files_only=local_only)
    ids = EMPTY_PROMPT_IDS + [0] * (tokens - len(EMPTY_PROMPT_IDS))
    try:
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local_only)
        ids = tokenizer("", padding="max_length", max_length=tokens, truncation=True).input_ids
    except (OSError, ValueError):
        pass  # no tokenizer files: the fixed OpenCLIP ids above are what it would produce
    vocab = encoder.config.vocab_size
    ids = [min(i, vocab - 1) for i in ids]
    with torch.no_grad():
        return encoder(torch.tensor([ids])).last_hidden_state.float()


def _cache_path(source: str) -> Path:
    from .loading import user_weights_dir

    key = hashlib.sha256(str(Path(source).resolve() if Path(source).exists() else source).encode()).hexdigest()[:12]
    return user_weights_dir() / f"sd-empty-prompt-{key}.safetensors"


def load_stable_diffusion(codec: nn.Module, config: PresetConfig, sd_weights: str | Path | None, allow_download: bool = False) -> str | None:
    """Load SD VAE/UNet (+ empty-prompt context) into ``codec``; None when SD is not available."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    source = str(sd_weights) if sd_weights else HUB_ID
    local_only = not allow_download
    if sd_weights and not Path(source).is_dir():
        raise InputError(f"Stable Diffusion folder not found: {source}")
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", local_files_only=local_only)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if sd_weights:
            raise InputError(f"cannot load Stable Diffusion from {source}: {str(exc).splitlines()[0]}") from exc
        return None
    codec.autoencoder.vae.load_state_dict(vae.state_dict())
    state = unet.state_dict()
    state["conv_in.weight"] = widen_conv_in(state["conv_in.weight"], config.denoiser.unet["in_channels"])
    try:
        codec.denoiser.unet.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"the UNet in {source} does not match preset {config.name}: {str(exc).splitlines()[0]}") from exc
    cache = _cache_path(source)
    if cache.is_file():
        context = load_file(str(cache))["context"]
    else:
        context = empty_prompt_embedding(source, local_only, config.denoiser.context_tokens)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"context": context.contiguous()}, str(cache))
    codec.denoiser.context.copy_(context)
    return f"Stable Diffusion weights from {source}"
