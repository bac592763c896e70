"""The full-size magc-sd21 modules have the official shapes and sizes (built on the meta
device: no memory), and the official forward-pass facts hold in the small presets."""
from __future__ import annotations

import pytest
import torch

from magc.config import load_preset
from magc.models.codec import MagcCodec
from magc.models.denoiser import injected_features


@pytest.fixture(scope="module")
def sd21() -> MagcCodec:
    with torch.device("meta"):
        return MagcCodec(load_preset("magc-sd21"))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_unet_conv_in_takes_eight_channels(sd21: MagcCodec) -> None:
    assert tuple(sd21.denoiser.unet.conv_in.weight.shape) == (320, 8, 3, 3)


def test_parameter_counts_match_the_official_model(sd21: MagcCodec) -> None:
    """Numbers from the official model definition (magc_official_keys_summary.md)."""
    assert count(sd21.denoiser.unet) == 865_922_244
    assert count(sd21.denoiser.adapter) == 158_564_736
    assert count(sd21.autoencoder.vae) == 83_653_863
    extra = sd21.lcm.log_gains.numel() + sd21.lcm.log_hyper_gains.numel()  # rate gains (absent officially)
    assert count(sd21.lcm) - extra == 20_209_348


@pytest.mark.parametrize("size", [256, 512])
def test_latent_shapes(sd21: MagcCodec, size: int) -> None:
    image = torch.empty(1, 3, size, size, device="meta")
    rgb_map = torch.empty(1, 3, size, size, device="meta")
    z0 = sd21.autoencoder.encode(image)
    assert tuple(z0.shape) == (1, 4, size // 8, size // 8)
    sems = sd21.lcm.map_encoder(rgb_map)
    assert [tuple(s.shape[1:]) for s in sems] == [(192, size // 8, size // 8), (192, size // 16, size // 16), (192, size // 32, size // 32)]
    y = sd21.lcm.analysis(z0, sems)
    assert tuple(y.shape) == (1, 64, size // 32, size // 32)
    z = sd21.lcm.ha_1(y)
    assert tuple(z.shape) == (1, 64, size // 64, size // 64)
    params = sd21.lcm.hs_1(z)
    assert tuple(params.shape) == (1, 128, size // 32, size // 32)
    assert tuple(sd21.lcm.synthesis(y, sems).shape) == tuple(z0.shape)


def test_adapter_features_and_injection_points(sd21: MagcCodec) -> None:
    features = sd21.denoiser.adapter(torch.empty(1, 3, 256, 256, device="meta"), torch.empty(1, 4, 32, 32, device="meta"))
    assert [tuple(f.shape[1:]) for f in features] == [(320, 32, 32), (640, 16, 16), (1280, 8, 8), (1280, 4, 4)]
    unet = sd21.denoiser.unet
    widths = [unet.down_blocks[b].resnets[r].in_channels for b, r in sd21.preset.denoiser.adapter.injection]
    assert widths == [320, 640, 1280, 1280]


def test_official_adapter_level_loop_reuses_body_2_and_4() -> None:
    torch.manual_seed(0)
    codec = MagcCodec(load_preset("tiny-sd21"))
    calls: list[int] = []
    hooks = [m.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, m in enumerate(codec.denoiser.adapter.body)]
    codec.denoiser.adapter(torch.rand(1, 3, 64, 64), torch.rand(1, 4, 8, 8))
    for h in hooks:
        h.remove()
    assert calls == [0, 1, 2, 2, 3, 4, 4, 5, 6]


def test_spade_dead_branch_has_no_effect() -> None:
    """The official SPADE block keeps norm_0/basicblock_0 for loading, but never uses them."""
    torch.manual_seed(0)
    codec = MagcCodec(load_preset("tiny-sd21")).eval()
    block = codec.lcm.ga_sem1
    x, seg = torch.rand(1, 16, 8, 8), torch.rand(1, 8, 8, 8)
    before = block(x, seg)
    with torch.no_grad():
        for p in list(block.norm_0.parameters()) + list(block.basicblock_0.parameters()):
            p.add_(1.0)
    assert torch.equal(block(x, seg), before)


def test_features_are_added_to_resnet_inputs_and_skips_keep_the_raw_values() -> None:
    torch.manual_seed(0)
    codec = MagcCodec(load_preset("tiny-sd21")).eval()
    unet = codec.denoiser.unet
    points = codec.preset.denoiser.adapter.injection
    seen: dict = {}
    target = unet.down_blocks[points[0][0]].resnets[points[0][1]]
    def record(module, args):
        seen["input"] = args[0].clone()  # returns None: observe only

    sample = torch.rand(1, 8, 16, 16)
    t = torch.tensor([10])
    context = torch.zeros(1, 77, 16)
    feature = torch.full((1, 16, 16, 16), 3.0)
    skip = unet.conv_in.register_forward_hook(lambda m, a, out: seen.__setitem__("skip", out))
    with injected_features(unet, points[:1], [feature]):
        hook = target.register_forward_pre_hook(record)  # runs after the injection hook
        unet(sample, t, encoder_hidden_states=context)
    hook.remove()
    skip.remove()
    conv_in = unet.conv_in(sample)
    assert torch.allclose(seen["input"], conv_in + 3.0, atol=1e-5)
    assert torch.allclose(seen["skip"], conv_in, atol=1e-6)  # the skip tensor was not changed in place


def test_presets_are_plain_data() -> None:
    preset = load_preset("lite")
    data = preset.to_dict()
    from magc.config import preset_from_dict

    assert preset_from_dict(data) == preset
    with pytest.raises(Exception, match="unknown preset key"):
        preset_from_dict({**data, "surprise": 1})


def test_class_fractions_are_area_shares_with_unknown_ids_as_background() -> None:
    from magc.models.codec import class_fractions

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 7, (2, 16, 24), generator=generator, dtype=torch.uint8)
    ids[0, :4, :4] = 255  # outside the map
    fractions = class_fractions(ids, 5, factor=4)
    assert fractions.shape == (2, 5, 4, 6)
    known = torch.where(ids < 5, ids, torch.zeros_like(ids)).long()
    blocks = known.view(2, 4, 4, 6, 4).permute(0, 1, 3, 2, 4).reshape(2, 4, 6, 16)
    expected = torch.stack([(blocks == k).float().mean(-1) for k in range(5)], 1)
    assert torch.equal(fractions, expected)
    assert fractions[0, 0, 0, 0] == 1.0
    assert torch.allclose(fractions.sum(1), torch.ones(2, 4, 6))
    # int64 ids (training batches), negative ones, and a remainder narrower than a cell, which
    # average pooling drops
    wide = torch.cat([ids.long(), torch.full((2, 16, 3), -1)], 2)
    wide[1, 5, 7] = -3
    assert torch.equal(class_fractions(wide, 5, factor=4)[0], expected[0])
    assert class_fractions(wide, 5, factor=4)[1, 0, 1, 1] == expected[1, 0, 1, 1] + 1 / 16


def test_lite_decoder_reads_the_class_map_at_fine_resolution() -> None:
    """With ``decoder_map_classes`` the lite decoder reads the map: its map paths start at zero
    (the decoder computes what one without them does, so older weights can start it), and once
    trained a change of the map in one 16 px corner changes the image there and not far away
    (read at 1/2 and 1/4 resolution, not only through the 1/8 latent). Without a map it says
    so instead of decoding something else."""
    import dataclasses

    preset = load_preset("tiny-lite")
    assert preset.autoencoder.decoder_map_classes == 5 and load_preset("lite").autoencoder.decoder_map_classes == 5
    torch.manual_seed(0)
    with_map = MagcCodec(preset).eval()
    plain = MagcCodec(dataclasses.replace(preset, autoencoder=dataclasses.replace(preset.autoencoder, decoder_map_classes=0))).eval()
    missing, unexpected = plain.load_state_dict(with_map.state_dict(), strict=False)
    assert not missing and sorted({k.rsplit(".", 1)[0] for k in unexpected}) == ["autoencoder.decoder.map2", "autoencoder.decoder.map4"]
    z = torch.randn(1, 4, 16, 16)
    ids = torch.randint(0, 5, (1, 128, 128), dtype=torch.uint8)
    ids[0, 100:, :20] = 255  # outside the map: background
    with torch.no_grad():
        assert torch.equal(with_map.reconstruct(z, ids[0].numpy()), plain.reconstruct(z))
        for conv in (with_map.autoencoder.decoder.map4, with_map.autoencoder.decoder.map2):
            conv.weight.normal_(0, 0.5)
        before = with_map.reconstruct(z, ids[0].numpy())
        changed = ids.clone()
        changed[0, :16, :16] = (changed[0, :16, :16] + 1) % 5
        after = with_map.reconstruct(z, changed)
    difference = (after - before).abs().amax(1)[0]
    assert difference[:16, :16].mean() > 1e-3
    assert difference[64:, 64:].max() == 0
    with pytest.raises(ValueError, match="class map"):
        with_map.reconstruct(z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_channel_layer_norm_is_the_official_formula(dtype: torch.dtype, memory_format: torch.memory_format) -> None:
    """The fused layer_norm over channels computes the official (x - mean) / sqrt(var + eps) * g + b,
    in either memory format, and trains (gradients reach g and b)."""
    from magc.models.layers import ChannelLayerNorm

    torch.manual_seed(0)
    norm = ChannelLayerNorm(24).to(dtype)
    with torch.no_grad():
        norm.g.normal_()
        norm.b.normal_()
    x = (torch.randn(2, 24, 9, 13, dtype=dtype) * 3 + 1).to(memory_format=memory_format)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    official = (x - mean) / (var + norm.eps).sqrt() * norm.g + norm.b
    out = norm(x)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, official, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
    out.square().sum().backward()
    assert norm.g.grad is not None and norm.g.grad.abs().sum() > 0 and norm.b.grad.abs().sum() > 0
