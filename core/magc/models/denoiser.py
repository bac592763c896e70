"""The conditional denoiser: a diffusers UNet guided by z~ (concatenated) and the map (adapter).

::

    cat[z_t, z~] ──conv_in──> UNet encoder ──> mid ──> decoder ──> prediction
                               ▲ f0 ▲ f1 ▲ f2 ▲ f3      (adapter features, added to the
                                                         inputs of the resnets in ``injection``)

The official code adds the adapter features to the inputs of LDM ``input_blocks`` 1, 5, 8 and
10 (measured: shapes 320@32, 640@16, 1280@8, 1280@4 at 256 px), which in diffusers terms are
``down_blocks[0].resnets[0]``, ``down_blocks[1].resnets[1]``, ``down_blocks[2].resnets[1]`` and
``down_blocks[3].resnets[0]``; the skip connections keep the un-added values. That is not
where diffusers' own T2I-Adapter hook adds residuals, so this module adds them with forward
pre-hooks on exactly those resnets and otherwise runs diffusers' forward unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..config import DenoiserConfig
from .adapter import build_adapter


@contextmanager
def injected_features(unet: nn.Module, points: list[list[int]], features: list[torch.Tensor]) -> Iterator[None]:
    """Add ``features[k]`` to the input of ``unet.down_blocks[b].resnets[r]`` for each point."""
    handles = []
    for (block, resnet), feature in zip(points, features):
        def add(module: nn.Module, args: tuple, feature: torch.Tensor = feature) -> tuple:
            return (args[0] + feature.to(args[0].dtype), *args[1:])

        handles.append(unet.down_blocks[block].resnets[resnet].register_forward_pre_hook(add))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def build_unet(cfg: DenoiserConfig) -> nn.Module:
    from diffusers import UNet2DConditionModel, UNet2DModel

    if cfg.kind == "unet2d-condition":
        return UNet2DConditionModel(**cfg.unet)
    if cfg.kind == "unet2d":
        return UNet2DModel(**cfg.unet)
    raise ValueError(f"unknown denoiser kind {cfg.kind!r}")


class ConditionalDenoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig, latent_channels: int, map_channels: int, unet: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = unet if unet is not None else build_unet(cfg)
        self.adapter = build_adapter(cfg.adapter, map_channels, latent_channels)
        if cfg.kind == "unet2d-condition":
            # The empty-prompt text embedding, computed once (see ``sd_loading``) and saved
            # with the weights, so decoding never needs the text encoder.
            self.register_buffer("context", torch.zeros(1, cfg.context_tokens, cfg.context_dim))
        else:
            self.context = None

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, z_tilde: torch.Tensor, map_input: torch.Tensor) -> torch.Tensor:
        features = self.adapter(map_input, z_t)
        sample = torch.cat([z_t, z_tilde.to(z_t.dtype)], 1)
        with injected_features(self.unet, self.cfg.adapter.injection, features):
            if self.context is not None:
                context = self.context.to(z_t.dtype).expand(z_t.shape[0], -1, -1)
                return self.unet(sample, t, encoder_hidden_states=context).sample
            return self.unet(sample, t).sample
