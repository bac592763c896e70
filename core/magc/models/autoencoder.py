"""Image autoencoders: the latent space where the LCM compresses and the diffusion model works.

Both expose ``encode(x) -> z0`` and ``decode(z0) -> x`` with images in [-1, 1] and latents
already multiplied by the scaling factor, so the rest of the codec never asks which it has.

* ``SDAutoencoder`` wraps diffusers' ``AutoencoderKL`` (Stable Diffusion 2.1-base for the
  ``*-sd21`` presets). It encodes with the posterior *mode*: the official code draws a sample,
  which makes encoding random for no gain.
* ``LiteAutoencoder`` is this project's CPU-sized autoencoder. It works at 1/4 and 1/8
  resolution behind pixel (un)shuffles, because convolutions with few channels at full
  resolution are memory-bound on a CPU (measured 20-60 GFLOP/s against 250-400 GFLOP/s for 64-128
  channels at 1/4-1/8 resolution on the 2-core development machine). With
  ``decoder_map_classes`` its decoder also reads the class map, at 1/4 and 1/2 resolution:
  the map is known at the decoder at full resolution, while the latent (and the denoiser's
  view of the map) is at 1/8, too coarse for the edges of buildings and roads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AutoencoderConfig
from .class_maps import class_fractions
from .layers import LiteResBlock


class LiteEncoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig, in_channels: int = 3) -> None:
        super().__init__()
        w4, w8 = cfg.encoder_widths or cfg.widths
        blocks = cfg.blocks if cfg.encoder_blocks is None else cfg.encoder_blocks
        self.stem = nn.Conv2d(in_channels * 16, w4, 3, padding=1)
        self.blocks4 = nn.Sequential(*[LiteResBlock(w4) for _ in range(blocks)])
        self.down = nn.Conv2d(w4, w8, 3, stride=2, padding=1)
        self.blocks8 = nn.Sequential(*[LiteResBlock(w8) for _ in range(blocks)])
        self.out = nn.Conv2d(w8, cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks4(self.stem(F.pixel_unshuffle(x, 4)))
        h = self.blocks8(self.down(F.leaky_relu(h, 0.1)))
        return self.out(F.leaky_relu(h, 0.1))


# The decoder's map paths, by state-dict key within an autoencoder: weights trained before them
# may lack them (they start at zero), and a decoder that has them needs a map.
DECODER_MAP_PATHS = ("decoder.map4.", "decoder.map2.")


class LiteDecoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig, out_channels: int = 3) -> None:
        super().__init__()
        w4, w8 = cfg.widths
        w2 = max(w4 // 2, 16)
        self.stem = nn.Conv2d(cfg.latent_channels, w8, 3, padding=1)
        self.blocks8 = nn.Sequential(*[LiteResBlock(w8) for _ in range(cfg.blocks)])
        self.up4 = nn.Conv2d(w8, w4 * 4, 1)
        self.blocks4 = nn.Sequential(*[LiteResBlock(w4) for _ in range(cfg.blocks)])
        self.up2 = nn.Conv2d(w4, w2 * 4, 1)
        self.refine2 = nn.Conv2d(w2, w2, 3, padding=1)
        self.out = nn.Conv2d(w2, out_channels * 4, 3, padding=1)
        self.map_classes = cfg.decoder_map_classes
        if self.map_classes:
            # Added after each upsampling; zero at first, so a decoder trained without the map
            # computes what it did until the map paths learn.
            self.map4 = nn.Conv2d(self.map_classes, w4, 3, padding=1)
            self.map2 = nn.Conv2d(self.map_classes, w2, 3, padding=1)
            for conv in (self.map4, self.map2):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def _map_features(self, class_map: torch.Tensor | None) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        if not self.map_classes:
            return 0.0, 0.0
        if class_map is None:
            raise ValueError("this decoder reads the class map: give the (B, H, W) class ids")
        fractions2 = class_fractions(class_map, self.map_classes, 2).to(self.map2.weight.dtype)
        return self.map4(F.avg_pool2d(fractions2, 2)), self.map2(fractions2)

    def forward(self, z: torch.Tensor, class_map: torch.Tensor | None = None) -> torch.Tensor:
        """``class_map``: (B, 8·h, 8·w) class ids, for a decoder with ``decoder_map_classes``."""
        map4, map2 = self._map_features(class_map)
        h = self.blocks8(self.stem(z))
        h = self.blocks4(F.pixel_shuffle(self.up4(F.leaky_relu(h, 0.1)), 2) + map4)
        h = F.pixel_shuffle(self.up2(F.leaky_relu(h, 0.1)), 2) + map2
        h = h + self.refine2(F.leaky_relu(h, 0.1))
        return F.pixel_shuffle(self.out(F.leaky_relu(h, 0.1)), 2)


class LiteAutoencoder(nn.Module):
    """The scaling factor is a buffer: training fits it (unit-variance latents for the
    diffusion model) after stage 1, and it travels with the weights."""

    downscale = 8

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.register_buffer("scaling_factor", torch.tensor(float(cfg.scaling_factor)))
        self.encoder = LiteEncoder(cfg)
        self.decoder = LiteDecoder(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) * self.scaling_factor

    def decode(self, z0: torch.Tensor, class_map: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z0 / self.scaling_factor, class_map)


class SDAutoencoder(nn.Module):
    """diffusers ``AutoencoderKL`` behind the common interface (frozen in every stage)."""

    downscale = 8

    def __init__(self, cfg: AutoencoderConfig, vae: nn.Module | None = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.scaling_factor = cfg.scaling_factor
        self.vae = vae if vae is not None else AutoencoderKL(**cfg.vae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mode() * self.scaling_factor

    def decode(self, z0: torch.Tensor, class_map: torch.Tensor | None = None) -> torch.Tensor:
        """``class_map`` is accepted for a common interface; the SD decoder has no map input."""
        return self.vae.decode(z0 / self.scaling_factor).sample


def build_autoencoder(cfg: AutoencoderConfig) -> nn.Module:
    if cfg.kind == "lite":
        return LiteAutoencoder(cfg)
    if cfg.kind == "sd-vae":
        return SDAutoencoder(cfg)
    raise ValueError(f"unknown autoencoder kind {cfg.kind!r}")
