"""Networks that compute entropy parameters, evaluated identically on every machine.

Entropy decoding fails when the decoder's predicted scales or means differ from the
encoder's by even one ulp (see ``docs/FORMAT.md``: a flipped scale index corrupts every
later symbol). Two evaluation modes close that gap:

* ``ExactNet`` (the lite presets): weights and activations live on fixed-point grids
  (2^-12 and 2^-8), activations are LeakyReLU(1/8), and inference runs the convolutions on
  integer-valued float64 tensors. Every product and partial sum is an integer below 2^53,
  so the result is exact whatever the summation order, thread count or CPU. Training uses
  the same grids with straight-through rounding, so the trained net is the deployed net.
* ``float64`` (the official MAGC checkpoint, whose nets use GELU and LayerNorm): the net runs
  on the CPU in float64 and its outputs are snapped to the 2^-8 grid, so a disagreement
  needs a value within ~1e-16 of a grid boundary. The per-tile symbol checksum of the
  bitstream reports the rare case instead of returning garbage.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FRAC_BITS = 12
ACT_FRAC_BITS = 8
ACT_LIMIT = 2.0**7  # |activation| <= 128.0, i.e. 2^15 grid units
WEIGHT_LIMIT = 8.0
GRID = 2.0**ACT_FRAC_BITS
LEAKY_SLOPE = 0.125


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 0.5): the one rounding rule used on both sides of every fixed-point grid."""
    return torch.floor(x + 0.5)


def ste(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: forward ``rounded``, backward identity."""
    return x + (rounded - x).detach()


def to_grid(x: torch.Tensor, frac_bits: int = ACT_FRAC_BITS) -> torch.Tensor:
    """Integer grid units of ``x`` (float64, exact for |x| < 2^44)."""
    return round_half_up(x.double() * 2.0**frac_bits)


class FixedLeakyReLU(nn.Module):
    """LeakyReLU with slope 1/8, a power of two so that it stays on the fixed-point grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, LEAKY_SLOPE)


class ExactNet(nn.Sequential):
    """A conv stack (Conv2d, FixedLeakyReLU, PixelShuffle) that is bit-exact at inference.

    ``forward`` (training) fake-quantises weights and activations with straight-through
    rounding; ``exact`` evaluates the same arithmetic on integer grid units in float64.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self._quantize_act(x)
        for layer in self:
            if isinstance(layer, nn.Conv2d):
                w = ste(layer.weight, round_half_up(layer.weight.clamp(-WEIGHT_LIMIT, WEIGHT_LIMIT) * 2**WEIGHT_FRAC_BITS) / 2**WEIGHT_FRAC_BITS)
                b = layer.bias
                if b is not None:
                    scale = 2.0 ** (WEIGHT_FRAC_BITS + ACT_FRAC_BITS)
                    b = ste(b, round_half_up(b * scale) / scale)
                x = F.conv2d(x, w, b, padding=layer.padding)
            else:
                x = layer(x)
            x = self._quantize_act(x)
        return x

    @staticmethod
    def _quantize_act(x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(-ACT_LIMIT, ACT_LIMIT)
        return ste(x, round_half_up(x * GRID) / GRID)

    @torch.no_grad()
    def integer_layers(self) -> list[tuple]:
        """The layers as integer programs: ("conv", weight units, bias units, padding),
        ("leaky",) or ("shuffle", factor), weights and biases in float64 grid units."""
        program: list[tuple] = []
        for layer in self:
            if isinstance(layer, nn.Conv2d):
                w = round_half_up(layer.weight.double().clamp(-WEIGHT_LIMIT, WEIGHT_LIMIT) * 2**WEIGHT_FRAC_BITS)
                b = None
                if layer.bias is not None:
                    b = round_half_up(layer.bias.double() * 2.0 ** (WEIGHT_FRAC_BITS + ACT_FRAC_BITS))
                program.append(("conv", w.contiguous(), b, layer.padding))
            elif isinstance(layer, FixedLeakyReLU):
                program.append(("leaky",))
            elif isinstance(layer, nn.PixelShuffle):
                program.append(("shuffle", layer.upscale_factor))
            else:
                raise TypeError(f"ExactNet cannot evaluate {type(layer).__name__} exactly")
        return program

    @torch.no_grad()
    def exact(self, x_units: torch.Tensor, program: list[tuple] | None = None) -> torch.Tensor:
        """Evaluate on grid units (integer-valued float64 on the CPU); returns grid units.

        Every value is an integer below 2^53, so in-place and reordered operations give the
        same bits: round_half_up(acc / 2^12) is floor(acc * 2^-12 + 0.5) (a power of two
        scales exactly), and LeakyReLU(1/8) on integers is max(x, round_half_up(x / 8)).
        """
        limit = ACT_LIMIT * GRID
        x = x_units.clamp(-limit, limit)
        for op in program if program is not None else self.integer_layers():
            if op[0] == "conv":
                x = F.conv2d(x, op[1], op[2], padding=op[3])
                x.mul_(2.0**-WEIGHT_FRAC_BITS).add_(0.5).floor_()
            elif op[0] == "leaky":
                x = torch.maximum(x, (x * LEAKY_SLOPE).add_(0.5).floor_())
            else:
                x = F.pixel_shuffle(x, op[1])
            x.clamp_(-limit, limit)
        return x


def exact_net(widths: list[int], kernel: int = 3) -> ExactNet:
    """conv(w0->w1) act conv(w1->w2) ... conv(->w_last): the lite context/hyper nets."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Conv2d(cin, cout, kernel, padding=kernel // 2))
        if i < len(widths) - 2:
            layers.append(FixedLeakyReLU())
    return ExactNet(*layers)


class PortableEvaluator:
    """CPU float64 copies of the entropy-parameter nets, evaluated on the 2^-8 grid.

    Inputs and outputs are real values that lie on the grid; both encoder and decoder call
    this, so they see the same numbers.
    """

    def __init__(self, net: nn.Module) -> None:
        # Standard layout whatever the codec's: one memory format, one summation order.
        self.net = copy.deepcopy(net).to(device="cpu", dtype=torch.float64, memory_format=torch.contiguous_format).eval()
        self.exact = isinstance(net, ExactNet)
        self.program = self.net.integer_layers() if self.exact else None  # integer weights, made once

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        units = to_grid(x.detach().cpu().contiguous())
        if self.exact:
            out = self.net.exact(units, self.program)
        else:
            out = to_grid(self.net(units / GRID))
        return out / GRID
