"""The SD-size training recipe, run for a few steps on the toy-size preset on the CPU:
losses are finite, and stage 2 changes exactly the official trainable subset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from magc.config import load_preset
from magc.models.codec import MagcCodec
from magc.train.data import CropSampler, Scene
from magc.train.sd_stages import SDRecipe, set_stage, stage2_trainable, train_sd

from conftest import smooth_image


def toy_sampler() -> CropSampler:
    rng = np.random.default_rng(0)
    scenes = [Scene(f"s{i}", smooth_image(160, 160, seed=i), rng.integers(0, 5, (160, 160)).astype(np.uint8),
                    rng.integers(0, 5, (160, 160)).astype(np.uint8)) for i in range(2)]
    return CropSampler(scenes, 128)


def test_official_stage2_subset_names() -> None:
    assert stage2_trainable("denoiser.unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight")
    assert stage2_trainable("denoiser.unet.conv_in.weight") and not stage2_trainable("denoiser.unet.conv_in.bias")
    assert stage2_trainable("denoiser.adapter.body.7.block1.block.0.weight")
    assert stage2_trainable("lcm.gs_sem1.norm_1.mlp_gamma.weight") and stage2_trainable("lcm.hs_1.0.weight")
    assert not stage2_trainable("lcm.ga_1.0.weight") and not stage2_trainable("lcm.cc_mean_transforms.0.0.weight")
    assert not stage2_trainable("autoencoder.vae.encoder.conv_in.weight")


def test_full_size_stage2_trains_the_official_count() -> None:
    with torch.device("meta"):
        codec = MagcCodec(load_preset("magc-sd21"))
    params = set_stage(codec, 2)  # the per-rate gains are not in the official subset
    assert sum(p.numel() for p in params) == 291_055_620


def test_two_stages_run_and_respect_the_frozen_parts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    codec = MagcCodec(load_preset("tiny-sd21"))
    sampler = toy_sampler()
    recipe = SDRecipe(stage1_steps=2, stage2_steps=2, batch=2, crop=128, warmup=1, checkpoint_every=2, mixed_precision="no")
    train_sd(codec, sampler, tmp_path, recipe, stage=1)
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    train_sd(codec, sampler, tmp_path, recipe, stage=2)
    after = codec.state_dict()
    changed = {k for k in after if after[k].is_floating_point() and not torch.equal(after[k], before[k])}
    assert changed, "stage 2 trained nothing"
    names = dict(codec.named_parameters())
    for key in changed:
        if key in names and not key.endswith("quantiles"):
            assert stage2_trainable(key), key
    assert (tmp_path / "sd_stage1" / "step.json").exists() and (tmp_path / "sd_stage2" / "step.json").exists()
    assert not codec.lcm.ga_sem1.norm_1.param_free_norm.training  # frozen BatchNorms stay in eval mode
