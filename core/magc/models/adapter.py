"""Semantic Adapter Module (SAM): map + noisy latent -> features added inside the UNet encoder.

::

    map ──cond_encoder──> m (at latent resolution)
    cat[m, z_t] ──first_rb──> f0 ──level 1──> f1 ──level 2──> f2 ──level 3──> f3
    each f_k × feature_scale, added to the input of the UNet resnet named in ``injection``

``official-xl`` is the official ``Adapter_XL`` (T2I-Adapter style, 158.6 M parameters at SD
size), including its level loop that reuses ``body.2``/``body.4`` and never runs
``body.7``/``body.8``. ``lite`` takes per-class area fractions that are already at latent
resolution.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterConfig
from .layers import LiteResBlock, ResBlock


class OfficialAdapter(nn.Module):
    def __init__(self, cfg: AdapterConfig, map_channels: int, latent_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        m1, m2, m3 = cfg.map_widths
        self.cond_encoder = nn.Sequential(
            nn.Conv2d(map_channels, m1, 5, 2, 2), nn.GELU(), nn.Conv2d(m1, m2, 3, 2, 1), nn.GELU(), nn.Conv2d(m2, m3, 3, 2, 1)
        )
        w = cfg.widths
        self.first_rb = ResBlock(m3 + latent_channels, w[0])
        body: list[nn.Module] = []
        for cin, cout in zip(w[:-1], w[1:]):
            body += [nn.Conv2d(cin, cout, 3, 2, 1), ResBlock(cout), ResBlock(cout)]
        self.body = nn.ModuleList(body)

    def _level_modules(self, level: int) -> list[int]:
        if self.cfg.official_level_loop:
            return [level * 2 + j for j in range(3)]
        return [level * 3 + j for j in range(3)]

    def forward(self, map_input: torch.Tensor, z_t: torch.Tensor) -> list[torch.Tensor]:
        latent = self.first_rb(torch.cat([self.cond_encoder(map_input), z_t], 1))
        features = [latent]
        for level in range(len(self.cfg.widths) - 1):
            for index in self._level_modules(level):
                latent = self.body[index](latent)
            features.append(latent)
        return [f * self.cfg.feature_scale for f in features]


class LiteAdapter(nn.Module):
    def __init__(self, cfg: AdapterConfig, map_channels: int, latent_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.first = nn.Sequential(nn.Conv2d(map_channels + latent_channels, w[0], 3, padding=1), LiteResBlock(w[0]))
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), LiteResBlock(cout)) for cin, cout in zip(w[:-1], w[1:])
        )

    def forward(self, map_input: torch.Tensor, z_t: torch.Tensor) -> list[torch.Tensor]:
        latent = self.first(torch.cat([map_input, z_t], 1))
        features = [latent]
        for level in self.levels:
            latent = level(latent)
            features.append(latent)
        return [f * self.cfg.feature_scale for f in features]


def build_adapter(cfg: AdapterConfig, map_channels: int, latent_channels: int) -> nn.Module:
    if cfg.kind == "official-xl":
        return OfficialAdapter(cfg, map_channels, latent_channels)
    if cfg.kind == "lite":
        return LiteAdapter(cfg, map_channels, latent_channels)
    raise ValueError(f"unknown adapter kind {cfg.kind!r}")
