"""Encode/decode symmetry of the entropy-coded latent: the decoder's ŷ is the encoder's ŷ,
bit for bit, also in another process with another torch thread count.

Another process with another thread count is the cheapest stand-in for another machine:
it changes how floating-point sums are split and ordered. The lite presets' entropy nets are
integer-exact (float64 on integer grid values), so nothing can differ.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from magc.models.entropy_net import ExactNet, FixedLeakyReLU, PortableEvaluator, exact_net
from magc.models.lcm import CodedTile
from magc.models.loading import load_codec

DECODE_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    from magc.models.lcm import CodedTile
    from magc.models.loading import load_codec
    preset, rate, h, w, check = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    data = open(sys.argv[7], "rb").read()
    codec = load_codec(preset, allow_untrained=True, device="cpu").codec
    y_hat = codec.decompress(CodedTile(data, check, (h, w)), rate)
    print(hashlib.sha256(y_hat.numpy().tobytes()).hexdigest())
    """
)


def encode_latent(preset: str, size: int, rate: int, seed: int = 3):
    torch.manual_seed(seed)
    loaded = load_codec(preset, allow_untrained=True, device="cpu")
    codec = loaded.codec
    image = torch.rand(1, 3, size, size) * 2 - 1
    classes = torch.randint(0, 5, (size, size)).numpy().astype(np.uint8)
    map_window = classes if loaded.preset.map.kind == "classes" else np.stack([classes * 50] * 3).astype(np.uint8)
    with torch.no_grad():
        y = codec.analyse(image, codec.map_input(map_window)) * 4  # spread the symbols over many scales
    coded, y_hat = codec.lcm.compress(y, rate)
    return codec, coded, y_hat


@pytest.mark.parametrize("preset,size,rate", [("tiny-lite", 256, 1), ("lite", 512, 0), ("lite", 512, 3), ("tiny-sd21", 256, 0)])
def test_decoder_reproduces_encoder_latent(preset: str, size: int, rate: int) -> None:
    codec, coded, y_hat = encode_latent(preset, size, rate)
    decoded = codec.decompress(coded, rate)
    assert decoded.dtype == torch.float64
    assert torch.equal(decoded, y_hat)


@pytest.mark.parametrize("preset,threads", [("lite", 1), ("tiny-sd21", 1), ("lite", 2)])
def test_decoder_in_another_process_and_thread_count(preset: str, threads: int, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    codec, coded, y_hat = encode_latent(preset, 512 if preset == "lite" else 256, 0)
    stream = tmp_path / "tile.bin"
    stream.write_bytes(coded.data)
    h, w = coded.y_shape
    result = subprocess.run(
        [sys.executable, "-c", DECODE_SCRIPT, str(threads), preset, "0", str(h), str(w), str(coded.symbol_check), str(stream)],
        capture_output=True, text=True, check=True,
    )
    assert result.stdout.strip() == hashlib.sha256(y_hat.numpy().tobytes()).hexdigest()


def test_exact_net_is_order_independent() -> None:
    """The integer evaluation gives identical bits for any batch split and thread count,
    and matches the fake-quantised training forward to within one grid step."""
    torch.manual_seed(0)
    net = exact_net([24, 64, 32, 8])
    x = torch.randn(4, 24, 16, 16) * 3
    evaluator = PortableEvaluator(net)
    whole = evaluator(x)
    torch.set_num_threads(1)
    parts = torch.cat([evaluator(x[i:i + 1]) for i in range(4)])
    torch.set_num_threads(2)
    assert torch.equal(whole, parts)
    with torch.no_grad():
        trained = net(x).double()
    assert (trained - whole).abs().max() <= 2 / 256


def _reference_exact(net: ExactNet, units: torch.Tensor) -> torch.Tensor:
    """The integer arithmetic as docs/FORMAT.md states it, one operation at a time."""
    from magc.models.entropy_net import ACT_LIMIT, GRID, WEIGHT_LIMIT

    limit = ACT_LIMIT * GRID
    x = units.clamp(-limit, limit)
    for layer in net:
        if isinstance(layer, torch.nn.Conv2d):
            w = torch.floor(layer.weight.double().clamp(-WEIGHT_LIMIT, WEIGHT_LIMIT) * 4096 + 0.5)
            acc = torch.nn.functional.conv2d(x, w, None, padding=layer.padding)
            acc = acc + torch.floor(layer.bias.double() * 2.0**20 + 0.5).view(1, -1, 1, 1)
            x = torch.floor(acc / 4096 + 0.5)
        elif isinstance(layer, FixedLeakyReLU):
            x = torch.where(x < 0, torch.floor(x / 8 + 0.5), x)
        else:
            x = layer(x)
        x = x.clamp(-limit, limit)
    return x


def test_exact_net_evaluation_equals_its_definition() -> None:
    """The evaluator's fused, in-place integer program (weights rounded once, bias inside the
    convolution, LeakyReLU as a maximum) gives the bits of the operation-by-operation definition,
    clamps included, on a hyper-synthesis-like net with a pixel shuffle."""
    torch.manual_seed(1)
    net = ExactNet(torch.nn.Conv2d(8, 32, 3, padding=1), FixedLeakyReLU(), torch.nn.Conv2d(32, 64, 1), torch.nn.PixelShuffle(2),
                   FixedLeakyReLU(), torch.nn.Conv2d(16, 12, 3, padding=1))
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.mul_(40)  # some weights beyond the clamp, activations beyond theirs
    evaluator = PortableEvaluator(net)
    x = torch.randn(2, 8, 9, 11) * 60
    units = torch.floor(x.double() * 256 + 0.5)
    expected = _reference_exact(evaluator.net, units)
    assert (expected.abs() == 128 * 256).any() and (expected < 0).any()
    assert torch.equal(evaluator(x) * 256, expected)


def test_symbol_checksum_reports_a_different_entropy_model() -> None:
    codec, coded, _ = encode_latent("tiny-lite", 256, 1)
    other = load_codec("tiny-lite", allow_untrained=True, device="cpu", seed=99).codec
    from magc.errors import FormatError

    with pytest.raises(FormatError, match="checksum"):
        other.decompress(coded, 1)


@pytest.mark.parametrize("preset", ["lite", "tiny-sd21"])
def test_memory_format_does_not_reach_the_entropy_coder(preset: str) -> None:
    """On the CPU the codec runs channels-last (faster convolutions); a decoder in the
    standard layout, as on a machine that does not convert, still reads its streams."""
    codec, coded, y_hat = encode_latent(preset, 256, 0)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in codec.parameters() if p.dim() == 4)
    codec.to(memory_format=torch.contiguous_format)
    codec.lcm.prepare_coding()
    assert torch.equal(codec.decompress(coded, 0), y_hat)
