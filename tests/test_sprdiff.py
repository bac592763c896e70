"""SPRDiff: the triple encoder, the DARM and the map-free LCM go through the same bitstream,
tiling and API as MAGC; a short training run of the lite stages works."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal

from magc.api import decode_raster, encode_raster, read_info
from magc.config import load_preset
from magc.errors import UsageError
from magc.models.loading import build_codec, load_codec

from conftest import smooth_image, write_geotiff


def test_full_size_sprdiff_shapes() -> None:
    with torch.device("meta"):
        codec = build_codec(load_preset("sprdiff-sd21"))
    assert tuple(codec.unet.conv_in.weight.shape) == (320, 4 + 4 + 16, 3, 3)
    widths = [codec.unet.down_blocks[b].resnets[r].in_channels for b, r in codec.preset.denoiser.adapter.injection]
    assert widths == codec.preset.sprdiff.semantic_widths == [320, 640, 1280, 1280]
    assert codec.lcm.ga_1[0].in_channels == codec.preset.sprdiff.fusion_channels


def test_conditions_have_the_unet_shapes() -> None:
    torch.manual_seed(0)
    codec = build_codec(load_preset("tiny-sprdiff")).eval()
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        fused, z0 = codec.fused(image)
        z_tilde = codec.synthesise(codec.lcm.compress(codec.analyse(image, None), 0)[1], None)
        coarse, semantic, pixel = codec.conditions(z_tilde)
    assert fused.shape[1] == codec.preset.sprdiff.fusion_channels and fused.shape[2:] == z0.shape[2:]
    assert coarse.shape == image.shape and pixel.shape == (1, codec.preset.sprdiff.pixel_channels, 32, 32)
    assert [tuple(s.shape[1:]) for s in semantic] == [(8, 32, 32), (8, 16, 16)]
    assert not [k for k in codec.state_dict() if "_conv_stem" in k or "._blocks." in k]  # the frozen EfficientNet is not in the weights


def test_sprdiff_round_trip_ignores_maps(tmp_path: Path, fixtures_dir: Path) -> None:
    loaded = load_codec("tiny-sprdiff", allow_untrained=True, device="cpu")
    raster = write_geotiff(tmp_path / "in.tif", smooth_image(200, 230))
    coded = tmp_path / "x.magc"
    encode_raster(raster, coded, [str(fixtures_dir / "geotiff_labels.geojson")], codec=loaded)
    assert read_info(coded)["preset"] == "tiny-sprdiff"
    decode_raster(coded, tmp_path / "x.tif", [], codec=loaded)  # no map needed
    assert gdal.Open(str(tmp_path / "x.tif")).RasterXSize == 230


def test_lite_stages_run(tmp_path: Path) -> None:
    from magc.models.weights import save_weights
    from magc.train import sprdiff_stages
    from magc.train.data import CropSampler, Scene
    from magc.train.loop import LoopConfig

    torch.manual_seed(0)
    vae_source = load_codec("tiny-lite", allow_untrained=True, device="cpu")
    save_weights(vae_source.codec, vae_source.preset, tmp_path / "map_vae.safetensors", trained=True, source="test")
    codec = build_codec(load_preset("tiny-sprdiff"))
    with pytest.raises(UsageError, match="reads a class map"):  # SPRDiff has no map to give such a decoder
        sprdiff_stages.load_vae(codec, tmp_path / "map_vae.safetensors")
    map_free = dataclasses.replace(vae_source.preset, autoencoder=dataclasses.replace(vae_source.preset.autoencoder, decoder_map_classes=0))
    save_weights(build_codec(map_free), map_free, tmp_path / "vae.safetensors", trained=True, source="test")
    codec = build_codec(load_preset("tiny-sprdiff"))
    rng = np.random.default_rng(0)
    scenes = [Scene("a", smooth_image(200, 200), rng.integers(0, 5, (200, 200)).astype(np.uint8), np.zeros((200, 200), np.uint8))]
    sampler = CropSampler(scenes, 192)
    vae_before = {k: v.clone() for k, v in codec.autoencoder.state_dict().items()}
    sprdiff_stages.load_vae(codec, tmp_path / "vae.safetensors")
    loaded_vae = {k: v.clone() for k, v in codec.autoencoder.state_dict().items()}
    assert any(not torch.equal(vae_before[k], loaded_vae[k]) for k in vae_before)
    small = dataclasses.replace(map_free, autoencoder=dataclasses.replace(map_free.autoencoder, encoder_widths=[4, 8]))
    save_weights(build_codec(small), small, tmp_path / "small.safetensors", trained=True, source="test")
    with pytest.raises(UsageError, match="no autoencoder of the shape"):  # a distilled encoder is not this VAE
        sprdiff_stages.load_vae(codec, tmp_path / "small.safetensors")
    sprdiff_stages.train_stage1(codec, sampler, tmp_path, LoopConfig(3, 1e-3, warmup=1), batch=2)
    assert float(codec.autoencoder.scaling_factor) == 1.0  # the test VAE comes unscaled
    sprdiff_stages.train_stage2(codec, sampler, tmp_path, LoopConfig(3, 1e-3, warmup=1), batch=2)
    for key, value in codec.autoencoder.state_dict().items():  # the VAE stayed frozen, but for its scale
        if key != "scaling_factor":
            assert torch.equal(value, loaded_vae[key]), key
    with torch.no_grad():  # stage 2 diffused unit-variance latents, as the noise schedule assumes
        assert 0.7 < float(codec.autoencoder.encode(sampler.batch(8)[0]).std()) < 1.4
    assert (tmp_path / "stage2.ckpt").exists()


@pytest.mark.parametrize("preset", ["tiny-lite", "tiny-sprdiff"])
def test_folding_the_latent_scale_keeps_the_codec(preset: str) -> None:
    """Stage 2 rescales z0 to unit variance; what stage 1 trained must compute the same:
    the same y (so the same bits) and the same decoded z~, on the new scale."""
    torch.manual_seed(0)
    codec = build_codec(load_preset(preset)).eval()
    image = torch.from_numpy(smooth_image(128, 128)).float()[None].div(127.5).sub(1)
    map_input = codec.map_input(np.zeros((128, 128), np.uint8))
    with torch.no_grad():
        before = (codec.autoencoder.encode(image), codec.analyse(image, map_input))
        z_tilde = codec.synthesise(torch.round(before[1]), map_input)
        decoded = codec.reconstruct(z_tilde, np.zeros((128, 128), np.uint8))
        codec.fold_latent_scale(6.5)
        after = (codec.autoencoder.encode(image), codec.analyse(image, map_input))
        torch.testing.assert_close(after[0], 6.5 * before[0])
        torch.testing.assert_close(after[1], before[1], rtol=1e-4, atol=1e-4)
        z_tilde_after = codec.synthesise(torch.round(before[1]), map_input)
        torch.testing.assert_close(z_tilde_after, 6.5 * z_tilde, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(codec.reconstruct(z_tilde_after, np.zeros((128, 128), np.uint8)), decoded, rtol=1e-4, atol=1e-4)
    assert float(before[1].abs().max()) > 1e-2 and float(z_tilde.abs().max()) > 1e-3
