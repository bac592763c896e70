"""Building blocks shared by the LCM, the adapter and the lite autoencoder.

Names and structure follow the official MAGC code (``ldm/models/hyperencoder.py``) so that
the released checkpoint maps onto them key by key: ``Block`` = conv3x3 -> channel LayerNorm ->
LeakyReLU, ``ResBlock`` = two Blocks plus a residual, ``SPADEResBlock`` keeps the official
dead branch (``norm_0``/``basicblock_0``) for loading but computes only what the official
forward computes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (official ``LayerNorm``; g/b as (1,C,1,1))."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one fused pass over channels-last data (a free view on the CPU, where the codec runs
        # channels-last): ten times faster than mean, var and four elementwise passes
        channels = x.shape[1]
        normed = F.layer_norm(x.permute(0, 2, 3, 1), (channels,), self.g.view(channels), self.b.view(channels), self.eps)
        return normed.permute(0, 3, 1, 2)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "layer":
        return ChannelLayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class Block(nn.Module):
    """conv3x3 -> norm -> LeakyReLU(0.01); the official ``Block`` wraps these as ``block.{0,1,2}``."""

    def __init__(self, dim: int, dim_out: int, norm: str = "layer") -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim_out, 3, padding=1), _norm(norm, dim_out), nn.LeakyReLU(0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResBlock(nn.Module):
    """Two Blocks plus a residual (1x1 ``res_conv`` only when the width changes)."""

    def __init__(self, dim: int, dim_out: int | None = None, norm: str = "layer") -> None:
        super().__init__()
        dim_out = dim_out or dim
        self.block1 = Block(dim, dim_out, norm)
        self.block2 = Block(dim_out, dim_out, norm)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x)) + self.res_conv(x)


class Downsample(nn.Module):
    """Stride-2 conv3x3 (official ``myDownsample``: a ``.conv`` attribute)."""

    def __init__(self, dim: int, dim_out: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out or dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """1x1 conv to 4C then PixelShuffle(2) (official ``myUpsample``: ``.pix_shuffle.0``)."""

    def __init__(self, dim: int, dim_out: int | None = None) -> None:
        super().__init__()
        self.pix_shuffle = nn.Sequential(nn.Conv2d(dim, (dim_out or dim) * 4, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pix_shuffle(x)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation as the official code has it.

    Unlike the SPADE paper, the normalised activation is concatenated with the map features
    (map first) before the shared MLP, and the map features already come at the right size.
    """

    def __init__(self, channels: int, label_channels: int, norm: str = "layer") -> None:
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(channels, affine=False)
        self.mlp_shared = nn.Sequential(
            nn.Conv2d(label_channels + channels, channels, 3, padding=1), _norm(norm, channels), nn.LeakyReLU(0.01)
        )
        self.mlp_gamma = nn.Conv2d(channels, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        actv = self.mlp_shared(torch.cat([segmap, normalized], dim=1))
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    """``x + Block(SPADE_1(x, seg))``.

    The official block builds a second branch (``norm_0``/``basicblock_0``) whose result is
    overwritten before use; ``official_dead_branch=True`` keeps those modules so that the
    released checkpoint loads strictly. They never run.
    """

    def __init__(self, channels: int, label_channels: int, norm: str = "layer", official_dead_branch: bool = False) -> None:
        super().__init__()
        if official_dead_branch:
            self.norm_0 = SPADE(channels, label_channels, norm)
            self.basicblock_0 = Block(channels, channels, norm)
        self.norm_1 = SPADE(channels, label_channels, norm)
        self.basicblock_1 = Block(channels, channels, norm)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        return x + self.basicblock_1(self.norm_1(x, segmap))


class LiteResBlock(nn.Module):
    """Norm-free residual block for the CPU-sized autoencoder (two conv3x3 + LeakyReLU)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.1)), 0.1))
