"""The MAGC codec: autoencoder + LCM + conditional denoiser, built from a preset.

::

    encode:  image ──AE.encode──> z0 ──LCM.analysis(·, map)──> y ──LCM.compress──> bytes
    decode:  bytes ──LCM.decompress──> ŷ ──LCM.synthesis(·, map)──> z~
             z~ ──sample(denoiser(·, z~, map))──> ẑ0 ──AE.decode──> image

Each verb works on one window (a tile plus its halo); ``tiling`` and ``api`` decide which
windows, and keep encode and decode mirrored.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import PresetConfig, SamplerConfig
from ..sampling import NoiseFn, sample
from .autoencoder import build_autoencoder
from .class_maps import class_fractions
from .denoiser import ConditionalDenoiser
from .lcm import CodedTile, LatentCompressionModule

MAP_NODATA = 255


class MagcCodec(nn.Module):
    method = "magc"

    def __init__(self, preset: PresetConfig) -> None:
        super().__init__()
        self.preset = preset
        latent = preset.autoencoder.latent_channels
        map_channels = preset.map.num_classes if preset.map.kind == "classes" else 3
        decoder_classes = preset.autoencoder.decoder_map_classes
        if decoder_classes and (preset.map.kind != "classes" or decoder_classes != preset.map.num_classes):
            raise ValueError(f"preset {preset.name}: autoencoder.decoder_map_classes wants a class map of as many classes")
        self.autoencoder = build_autoencoder(preset.autoencoder)
        self.lcm = LatentCompressionModule(preset.lcm, latent, map_channels, len(preset.rates))
        self.lcm.set_rate_gains([r.gain for r in preset.rates])
        self.denoiser = ConditionalDenoiser(preset.denoiser, latent, map_channels)

    @torch.no_grad()
    def fold_latent_scale(self, scale: float) -> None:
        """Make z0 = AE.encode(x) carry ``scale`` without changing what the LCM computes: its
        first convolution takes the old z0 back, its last one gives z~ on the new scale."""
        ratio = scale / float(self.autoencoder.scaling_factor)
        self.autoencoder.scaling_factor.fill_(scale)
        self.lcm.ga_1[0].weight.div_(ratio)
        self.lcm.gs_4.weight.mul_(ratio)
        self.lcm.gs_4.bias.mul_(ratio)

    # -- inputs --------------------------------------------------------------------------
    def map_input(self, map_window: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The network input for a map window: (H, W) class ids or (3, H, W) uint8 RGB."""
        tensor = torch.as_tensor(np.asarray(map_window))
        if self.preset.map.kind == "classes":
            if tensor.dim() == 2:
                tensor = tensor.unsqueeze(0)
            return class_fractions(tensor, self.preset.map.num_classes)
        if tensor.dim() == 3:
            tensor = tensor.unsqueeze(0)
        return tensor.float() / 255.0

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- encoder side --------------------------------------------------------------------
    def analyse(self, image: torch.Tensor, map_input: torch.Tensor) -> torch.Tensor:
        """y for an image window in [-1, 1] (B, 3, H, W); H, W multiples of 64."""
        z0 = self.autoencoder.encode(image)
        return self.lcm.analysis(z0, self.lcm.map_encoder(map_input))

    def compress(self, y: torch.Tensor, rate_index: int) -> CodedTile:
        return self.lcm.compress(y, rate_index)[0]

    # -- decoder side --------------------------------------------------------------------
    def decompress(self, coded: CodedTile, rate_index: int) -> torch.Tensor:
        return self.lcm.decompress(coded, rate_index)

    def synthesise(self, y_hat: torch.Tensor, map_input: torch.Tensor) -> torch.Tensor:
        """z~ from ŷ and the map (the latent that guides the diffusion model)."""
        sems = self.lcm.map_encoder(map_input)
        return self.lcm.synthesis(y_hat.to(map_input.dtype), sems)

    def generate(self, z_tilde: torch.Tensor, map_input: torch.Tensor, noise: NoiseFn, sampler: SamplerConfig | None = None) -> torch.Tensor:
        """ẑ0 by sampling the conditional denoiser (with the preset's sampler unless given)."""
        cfg = sampler or self.preset.sampler

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.denoiser(x, t, z_tilde, map_input)

        return sample(denoise, cfg, self.preset.denoiser.prediction_type, z_tilde, noise)

    def reconstruct(self, z0_hat: torch.Tensor, map_window: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """The image of ẑ0; ``map_window`` (the window's (H, W) class ids) is read by a decoder
        with ``decoder_map_classes``, which refuses to decode without it."""
        class_map = None
        if self.preset.autoencoder.decoder_map_classes and map_window is not None:
            class_map = torch.as_tensor(np.asarray(map_window)).to(z0_hat.device)
            if class_map.dim() == 2:
                class_map = class_map.unsqueeze(0)
        return self.autoencoder.decode(z0_hat, class_map).clamp(-1, 1)
