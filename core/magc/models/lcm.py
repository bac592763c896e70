"""Latent Compression Module (LCM) of MAGC, with a real decoder-side decompress.

::

    z0 ──g_a(·, sem)──> y ──h_a──> z ──×hg_k──> EB_k ──> ẑ ──÷hg_k──> h_s ──> (σ_h, μ_h)
                         │                                                     │
                         └── slice i: μ_i, σ_i = cc_i([μ_h|σ_h, ŷ_<i])  <──────┘
                             s_i = round((y_i − μ_i)·g_k)   (GaussianConditional, σ_i·g_k)
                             ŷ_i = μ_i + s_i / g_k
    ŷ ──g_s(·, sem)──> z̃   (the latent that guides the diffusion model)

Structure and names follow the official code (``ga_*``, ``gs_*``, ``ha_1``, ``hs_1``,
``sem_encoder``, ``cc_*_transforms``), composed from compressai's ``EntropyBottleneck`` and
``GaussianConditional``. What the official code lacks and this module adds:

* several rates from one model: per-rate quantisation gains g_k on y and hg_k on z, one
  entropy bottleneck per rate (``rate_index`` selects them);
* the auxiliary quantile loss (``aux_loss``);
* ``compress``/``decompress`` that really decode slice by slice from the bitstream alone,
  with entropy parameters computed by ``PortableEvaluator`` so that encoder and decoder agree
  bit for bit across machines (see ``entropy_net``).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn

from ..config import LCMConfig
from .entropy_net import ExactNet, FixedLeakyReLU, PortableEvaluator, exact_net, ste
from .layers import ChannelLayerNorm, Downsample, ResBlock, SPADEResBlock, Upsample


def scale_table(low: float, high: float, levels: int) -> list[float]:
    return [float(v) for v in torch.exp(torch.linspace(math.log(low), math.log(high), int(levels), device="cpu"))]


def _stage(first: nn.Module, channels: int, blocks: int, norm: str) -> nn.Sequential:
    return nn.Sequential(first, *[ResBlock(channels, channels, norm) for _ in range(blocks)])


class MapFreeBlock(ResBlock):
    """Stands where a SPADE block stands when there is no map: a residual block."""

    def forward(self, x: torch.Tensor, segmap: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


def _conditioned(channels: int, features: int, norm: str, dead: bool, map_free: bool) -> nn.Module:
    return MapFreeBlock(channels, channels, norm) if map_free else SPADEResBlock(channels, features, norm, dead)


class MapFeatureEncoder(nn.Module):
    """Map -> features at 1/8, 1/16, 1/32 of the image (``sem0``, ``sem1``, ``sem2``).

    ``official-rgb``: the official ``sem_encoder`` (4 convs, no activations, on the RGB map at
    full resolution). ``class-fractions``: the lite variant on per-class area fractions that
    are already at 1/8 resolution. ``none``: no map (SPRDiff): every feature is None and the
    SPADE blocks become plain residual blocks.
    """

    def __init__(self, kind: str, in_channels: int, features: int, norm: str) -> None:
        super().__init__()
        if kind == "official-rgb":
            self.sem_encoder = nn.Sequential(
                nn.Conv2d(in_channels, 64, 5, 1, 2),
                nn.Conv2d(64, 128, 3, 2, 1),
                nn.Conv2d(128, 192, 3, 2, 1),
                nn.Conv2d(192, features, 3, 2, 1),
            )
        elif kind == "class-fractions":
            self.sem_encoder = nn.Sequential(
                nn.Conv2d(in_channels, features, 3, 1, 1), nn.LeakyReLU(0.01), nn.Conv2d(features, features, 3, 1, 1)
            )
        elif kind == "none":
            self.sem_encoder = None
            return
        else:
            raise ValueError(f"unknown map encoder {kind!r}")
        self.sem_conv1 = self._down(features, norm)
        self.sem_conv2 = self._down(features, norm)

    @staticmethod
    def _down(features: int, norm: str) -> nn.Sequential:
        norm_layer = ChannelLayerNorm(features) if norm == "layer" else nn.Identity()
        return nn.Sequential(nn.Conv2d(features, features, 3, 2, 1), norm_layer, nn.LeakyReLU(0.01))

    def forward(self, map_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.sem_encoder is None:  # map-free presets (SPRDiff)
            return (None, None, None)
        sem0 = self.sem_encoder(map_input)
        sem1 = self.sem_conv1(sem0)
        return sem0, sem1, self.sem_conv2(sem1)


@dataclass
class CodedTile:
    """One tile's entropy-coded latent: the rANS stream and a checksum of its symbols."""

    data: bytes
    symbol_check: int
    y_shape: tuple[int, int]


def symbol_checksum(symbols: np.ndarray) -> int:
    """16-bit checksum of the decoded symbols: detects an entropy-parameter mismatch."""
    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<i4").tobytes()) & 0xFFFF


class LatentCompressionModule(nn.Module):
    def __init__(self, cfg: LCMConfig, latent_channels: int, map_channels: int, num_rates: int, in_channels: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        N, M, Mz, S = cfg.N, cfg.M, cfg.hyper_channels, cfg.slices
        if M % S:
            raise ValueError("M must be divisible by the number of slices")
        self.slice_width = M // S
        nb, norm, feat = cfg.blocks, cfg.norm, cfg.map_features
        dead = cfg.official_dead_branch

        free = cfg.map_encoder == "none"
        self.map_encoder = MapFeatureEncoder(cfg.map_encoder, map_channels, feat, norm)
        Na = cfg.analysis_width or N
        nba = nb if cfg.analysis_blocks is None else cfg.analysis_blocks
        self.ga_1 = _stage(nn.Conv2d(in_channels or latent_channels, Na, 3, padding=1), Na, nba, norm)
        self.ga_sem1 = _conditioned(Na, feat, norm, dead, free)
        self.ga_2 = _stage(Downsample(Na), Na, nba, norm)
        self.ga_sem2 = _conditioned(Na, feat, norm, dead, free)
        self.ga_3 = _stage(Downsample(Na), Na, nba, norm)
        self.ga_sem3 = _conditioned(Na, feat, norm, dead, free)
        self.ga_4 = nn.Conv2d(Na, M, 3, padding=1)

        self.gs_1 = _stage(nn.Conv2d(M, N, 3, padding=1), N, nb, norm)
        self.gs_sem1 = _conditioned(N, feat, norm, dead, free)
        self.gs_2 = _stage(Upsample(N), N, nb, norm)
        self.gs_sem2 = _conditioned(N, feat, norm, dead, free)
        self.gs_3 = _stage(Upsample(N), N, nb, norm)
        self.gs_sem3 = _conditioned(N, feat, norm, dead, free)
        self.gs_4 = nn.Conv2d(N, latent_channels, 3, padding=1)

        self.ha_1 = nn.Sequential(
            nn.Conv2d(M, N, 3, padding=1), ResBlock(N, N, norm), Downsample(N), ResBlock(N, N, norm), nn.Conv2d(N, Mz, 3, padding=1)
        )
        if cfg.entropy_net == "exact":
            self.hs_1 = ExactNet(
                nn.Conv2d(Mz, N, 3, padding=1), FixedLeakyReLU(), nn.Conv2d(N, 4 * N, 1), nn.PixelShuffle(2),
                FixedLeakyReLU(), nn.Conv2d(N, N, 3, padding=1), FixedLeakyReLU(), nn.Conv2d(N, 2 * M, 3, padding=1),
            )
            make_cc = lambda i: exact_net([M + self.slice_width * i, *cfg.context_widths, self.slice_width])  # noqa: E731
        elif cfg.entropy_net == "float64":
            self.hs_1 = nn.Sequential(
                nn.Conv2d(Mz, N, 3, padding=1), ResBlock(N, N, norm), Upsample(N), ResBlock(N, N, norm), nn.Conv2d(N, 2 * M, 3, padding=1)
            )
            make_cc = lambda i: self._gelu_net([M + self.slice_width * i, *cfg.context_widths, self.slice_width])  # noqa: E731
        else:
            raise ValueError(f"unknown entropy_net {cfg.entropy_net!r}")
        self.cc_mean_transforms = nn.ModuleList(make_cc(i) for i in range(S))
        self.cc_scale_transforms = nn.ModuleList(make_cc(i) for i in range(S))

        self.entropy_bottlenecks = nn.ModuleList(EntropyBottleneck(Mz, init_scale=cfg.bottleneck_init_scale) for _ in range(num_rates))
        self.gaussian_conditional = GaussianConditional(scale_table(*cfg.scale_table))
        self.log_gains = nn.Parameter(torch.zeros(num_rates, M))
        self.log_hyper_gains = nn.Parameter(torch.zeros(num_rates, Mz))
        self._portable: dict[str, PortableEvaluator] | None = None
        self._cdf_cache: dict[int, tuple] = {}

    @staticmethod
    def _gelu_net(widths: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            if i < len(widths) - 2:
                layers.append(nn.GELU())
        return nn.Sequential(*layers)

    def set_rate_gains(self, gains: list[float]) -> None:
        """Initial per-rate gains on y (learned afterwards); hyper gains start at 1."""
        with torch.no_grad():
            self.log_gains.copy_(torch.tensor(gains).log().view(-1, 1).expand_as(self.log_gains))
            self.log_hyper_gains.zero_()

    @property
    def num_rates(self) -> int:
        return self.log_gains.shape[0]

    # -- shared pieces -------------------------------------------------------------------
    def analysis(self, z0: torch.Tensor, sems: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = self.ga_sem1(self.ga_1(z0), sems[0])
        x = self.ga_sem2(self.ga_2(x), sems[1])
        x = self.ga_sem3(self.ga_3(x), sems[2])
        return self.ga_4(x)

    def synthesis(self, y_hat: torch.Tensor, sems: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = self.gs_sem1(self.gs_1(y_hat), sems[2])
        x = self.gs_sem2(self.gs_2(x), sems[1])
        x = self.gs_sem3(self.gs_3(x), sems[0])
        return self.gs_4(x)

    def gains(self, rate_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.log_gains[rate_index].exp(), self.log_hyper_gains[rate_index].exp()

    def aux_loss(self) -> torch.Tensor:
        """Quantile loss of the entropy bottlenecks (absent from the official code)."""
        return sum(eb.loss() for eb in self.entropy_bottlenecks)

    # -- training ----------------------------------------------------------------------
    def forward(self, z0: torch.Tensor, sems: tuple[torch.Tensor, ...], rate_index: int) -> dict:
        """Training/evaluation pass with noise-relaxed likelihoods and STE-rounded latents."""
        gain, hyper_gain = self.gains(rate_index)
        gain, hyper_gain = gain.view(1, -1, 1, 1), hyper_gain.view(1, -1, 1, 1)
        eb = self.entropy_bottlenecks[rate_index]
        y = self.analysis(z0, sems)
        z = self.ha_1(y) * hyper_gain
        _, z_likelihoods = eb(z)
        medians = eb._get_medians().view(1, -1, 1, 1)
        z_hat = (ste(z - medians, torch.round(z - medians)) + medians) / hyper_gain
        scales_h, means_h = self.hs_1(z_hat).chunk(2, 1)
        y_hat_slices: list[torch.Tensor] = []
        y_likelihoods = []
        sw = self.slice_width
        for i in range(self.cfg.slices):
            mu = self.cc_mean_transforms[i](torch.cat([means_h, *y_hat_slices], 1))
            sigma = self.cc_scale_transforms[i](torch.cat([scales_h, *y_hat_slices], 1))
            g = gain[:, i * sw:(i + 1) * sw]
            residual = (y[:, i * sw:(i + 1) * sw] - mu) * g
            _, lik = self.gaussian_conditional(residual, sigma * g)
            y_likelihoods.append(lik)
            y_hat_slices.append(ste(residual, torch.round(residual)) / g + mu)
        y_hat = torch.cat(y_hat_slices, 1)
        return {
            "y_hat": y_hat,
            "z_tilde": self.synthesis(y_hat, sems),
            "likelihoods": {"y": torch.cat(y_likelihoods, 1), "z": z_likelihoods},
        }

    # -- coding --------------------------------------------------------------------------
    def prepare_coding(self) -> None:
        """Freeze CDF tables and build the portable entropy-parameter evaluators.

        The CDF tables are buffers saved with the weights, so every machine uses the very
        tables the encoder used; they are computed here only when absent.
        """
        for eb in self.entropy_bottlenecks:
            if eb._offset.numel() == 0:
                eb.update(force=True)
        if self.gaussian_conditional._offset.numel() == 0:
            self.gaussian_conditional.update()
        self._portable = {
            "hs": PortableEvaluator(self.hs_1),
            **{f"mean{i}": PortableEvaluator(m) for i, m in enumerate(self.cc_mean_transforms)},
            **{f"scale{i}": PortableEvaluator(m) for i, m in enumerate(self.cc_scale_transforms)},
        }
        self._cdf_cache = {}

    def _tables(self, rate_index: int) -> tuple:
        """One CDF table list per rate: the rate's bottleneck channels, then the Gaussian scales."""
        if rate_index not in self._cdf_cache:
            eb, gc = self.entropy_bottlenecks[rate_index], self.gaussian_conditional
            cdfs = eb._quantized_cdf.tolist() + gc._quantized_cdf.tolist()
            lengths = eb._cdf_length.tolist() + gc._cdf_length.tolist()
            offsets = eb._offset.tolist() + gc._offset.tolist()
            gc_table = gc.scale_table.double()
            self._cdf_cache[rate_index] = (cdfs, lengths, offsets, eb._quantized_cdf.shape[0], gc_table)
        return self._cdf_cache[rate_index]

    def _gains64(self, rate_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        gain, hyper_gain = self.gains(rate_index)
        return gain.detach().cpu().double().view(1, -1, 1, 1), hyper_gain.detach().cpu().double().view(1, -1, 1, 1)

    def _medians64(self, rate_index: int) -> torch.Tensor:
        return self.entropy_bottlenecks[rate_index]._get_medians().detach().cpu().double().view(1, -1, 1, 1)

    def _scale_indexes(self, sigma: torch.Tensor, gain: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        scales = (sigma * gain).clamp_min(float(self.gaussian_conditional.lower_bound_scale.bound))
        return (scales.unsqueeze(-1) > table[:-1]).sum(-1).to(torch.int32)

    def _slice_params(self, i: int, hyper: tuple[torch.Tensor, torch.Tensor], y_hat_slices: list[torch.Tensor]):
        assert self._portable is not None
        scales_h, means_h = hyper
        mu = self._portable[f"mean{i}"](torch.cat([means_h, *y_hat_slices], 1))
        sigma = self._portable[f"scale{i}"](torch.cat([scales_h, *y_hat_slices], 1))
        return mu, sigma

    def compress(self, y: torch.Tensor, rate_index: int) -> tuple[CodedTile, torch.Tensor]:
        """Code one latent y (1, M, h, w) into one rANS stream; returns it and ŷ (CPU float64)."""
        if self._portable is None:
            self.prepare_coding()
        cdfs, lengths, offsets, n_eb, table = self._tables(rate_index)
        gain, hyper_gain = self._gains64(rate_index)
        medians = self._medians64(rate_index)
        with torch.no_grad():
            z = self.ha_1(y).detach().cpu().double() * hyper_gain
        y = y.detach().cpu().double()
        z_symbols = torch.floor(z - medians + 0.5)
        z_hat = (z_symbols + medians) / hyper_gain
        hyper = self._portable["hs"](z_hat).chunk(2, 1)
        encoder = BufferedRansEncoder()
        z_channels = torch.arange(z.shape[1], dtype=torch.int32).view(1, -1, 1, 1).expand_as(z)
        all_symbols = [z_symbols.int().flatten()]
        encoder.encode_with_indexes(z_symbols.int().flatten().tolist(), z_channels.flatten().tolist(), cdfs, lengths, offsets)
        sw = self.slice_width
        y_hat_slices: list[torch.Tensor] = []
        for i in range(self.cfg.slices):
            mu, sigma = self._slice_params(i, hyper, y_hat_slices)
            g = gain[:, i * sw:(i + 1) * sw]
            symbols = torch.floor((y[:, i * sw:(i + 1) * sw] - mu) * g + 0.5)
            indexes = self._scale_indexes(sigma, g, table) + n_eb
            encoder.encode_with_indexes(symbols.int().flatten().tolist(), indexes.flatten().tolist(), cdfs, lengths, offsets)
            all_symbols.append(symbols.int().flatten())
            y_hat_slices.append(mu + symbols / g)
        check = symbol_checksum(torch.cat(all_symbols).numpy())
        coded = CodedTile(encoder.flush(), check, (y.shape[2], y.shape[3]))
        return coded, torch.cat(y_hat_slices, 1)

    def decompress(self, coded: CodedTile, rate_index: int) -> torch.Tensor:
        """Decode ŷ (1, M, h, w, CPU float64) from the stream alone, slice by slice."""
        if self._portable is None:
            self.prepare_coding()
        cdfs, lengths, offsets, n_eb, table = self._tables(rate_index)
        gain, hyper_gain = self._gains64(rate_index)
        medians = self._medians64(rate_index)
        h, w = coded.y_shape
        Mz = self.cfg.hyper_channels
        n_z = Mz * (h // 2) * (w // 2)
        decoder = RansDecoder()
        # Zero padding bounds every read of the C++ decoder even on a stream it did not write
        # (the container's CRC already rejects corrupted payloads before they get here).
        n_symbols = n_z + self.cfg.M * h * w
        decoder.set_stream(coded.data + bytes(16 * n_symbols + 64))
        z_index = torch.arange(Mz, dtype=torch.int32).view(-1, 1).expand(Mz, (h // 2) * (w // 2))
        z_symbols = torch.tensor(decoder.decode_stream(z_index.flatten().tolist(), cdfs, lengths, offsets), dtype=torch.float64)
        all_symbols = [z_symbols.int()]
        z_hat = (z_symbols.view(1, Mz, h // 2, w // 2) + medians) / hyper_gain
        hyper = self._portable["hs"](z_hat).chunk(2, 1)
        sw = self.slice_width
        y_hat_slices: list[torch.Tensor] = []
        for i in range(self.cfg.slices):
            mu, sigma = self._slice_params(i, hyper, y_hat_slices)
            g = gain[:, i * sw:(i + 1) * sw]
            indexes = self._scale_indexes(sigma, g, table) + n_eb
            values = decoder.decode_stream(indexes.flatten().tolist(), cdfs, lengths, offsets)
            symbols = torch.tensor(values, dtype=torch.float64).view_as(mu)
            all_symbols.append(symbols.int().flatten())
            y_hat_slices.append(mu + symbols / g)
        check = symbol_checksum(torch.cat(all_symbols).numpy())
        if check != coded.symbol_check:
            from ..errors import FormatError

            raise FormatError(
                "decoded symbols do not match the encoder's checksum: the entropy model differs "
                "from the one that wrote this tile (different weights or library version)"
            )
        return torch.cat(y_hat_slices, 1)
