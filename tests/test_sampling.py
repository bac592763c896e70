"""The sampler: official respaced timesteps and posterior, few-step lite sampling, loading SD."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from magc.config import SamplerConfig, load_preset
from magc.sampling import make_schedule, output_for_x0, predict_x0_eps, sample, sampling_timesteps
from magc.train.magc_stages import decode_path_inputs


def test_official_respaced_timesteps() -> None:
    """The 50 IDDPM-respaced steps listed in magc_official_keys_summary.md, descending."""
    steps = sampling_timesteps(load_preset("magc-sd21").sampler)
    expected = [0, 20, 41, 61, 82, 102, 122, 143, 163, 183, 204, 224, 245, 265, 285, 306, 326, 347, 367, 387, 408, 428,
                449, 469, 489, 510, 530, 550, 571, 591, 612, 632, 652, 673, 693, 714, 734, 754, 775, 795, 816, 836, 856,
                877, 897, 917, 938, 958, 979, 999]
    assert steps == expected[::-1]


def test_official_schedule_values() -> None:
    cfg = load_preset("magc-sd21").sampler
    alphas = make_schedule(cfg).alphas_cumprod.double()
    assert float(make_schedule(cfg).betas[0]) == pytest.approx(0.00085, rel=1e-6)
    assert float(alphas[0]) == pytest.approx(0.99915, rel=1e-6)
    assert float(alphas[999]) == pytest.approx(0.004660098513077238, rel=1e-5)


def test_eta_one_step_is_the_official_ddpm_posterior() -> None:
    """DDIM with eta = 1 has the official respaced posterior variance (fixed_small)."""
    cfg = load_preset("magc-sd21").sampler
    alphas = make_schedule(cfg).alphas_cumprod.double()
    steps = sampling_timesteps(cfg)[::-1]  # ascending
    variances = []
    for k in range(3):
        a_t = alphas[steps[k]]
        a_prev = alphas[steps[k - 1]] if k > 0 else torch.tensor(1.0, dtype=torch.float64)
        variances.append(float((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)))
    assert variances == pytest.approx([0.0, 0.0008120241601235992, 0.009947987007650868], rel=1e-4, abs=1e-12)


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_prediction_types_invert(kind: str) -> None:
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    a = torch.tensor(0.3)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    output = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[kind]
    got_x0, got_eps = predict_x0_eps(output, x_t, a, kind)
    assert torch.allclose(got_x0, x0, atol=1e-5) and torch.allclose(got_eps, eps, atol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_training_target_is_the_output_that_gives_x0(kind: str) -> None:
    """Also for inputs not made from x0 (the decode path of stage 2): the target recovers x0."""
    torch.manual_seed(0)
    x0, x_t, a = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor(0.4)
    got_x0, _ = predict_x0_eps(output_for_x0(kind, x0, x_t, a), x_t, a, kind)
    assert torch.allclose(got_x0, x0, atol=1e-5)


def test_stage2_decode_path_inputs_are_what_decoding_feeds_the_denoiser() -> None:
    """Each (t, z_t) drawn for stage 2 is one the sampler really passes to the denoiser when
    decoding from z~, at one of the sampler's timesteps, sample by sample; drawing them skips
    the last denoiser call, whose output no input depends on."""
    cfg = load_preset("lite").sampler
    torch.manual_seed(0)
    guide = torch.randn(6, 8, 4, 4)
    decoding: dict[int, torch.Tensor] = {}

    def shrink(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        decoding[int(t[0])] = x.clone()
        return 0.5 * x

    torch.manual_seed(1)
    sample(shrink, cfg, "sample", guide, lambda i: torch.randn_like(guide))
    calls: list[int] = []
    torch.manual_seed(1)
    t, z_t = decode_path_inputs(lambda x, tt: calls.append(int(tt[0])) or 0.5 * x, cfg, "sample", guide)
    steps = sampling_timesteps(cfg)
    assert sorted(decoding) == sorted(steps) and len(steps) >= 2 and calls == steps[:-1]
    for b in range(guide.shape[0]):
        assert int(t[b]) in decoding and torch.equal(z_t[b], decoding[int(t[b])][b])
    assert {int(v) for v in t} == set(steps)  # six draws from two states: both are drawn (seeded)
    first = max(decoding)
    a = make_schedule(cfg).alphas_cumprod[first]
    noise = (decoding[first] - a.sqrt() * guide) / (1 - a).sqrt()  # the first input is re-noised z~
    assert 0.8 < float(noise.std()) < 1.2 and abs(float(noise.mean())) < 0.2


def test_perfect_denoiser_recovers_the_target_in_few_steps() -> None:
    """With an oracle x0-predictor, the lite schedule (<= 4 denoiser calls) returns the target
    exactly, whatever the noise."""
    cfg = load_preset("lite").sampler
    target = torch.randn(1, 8, 16, 16)
    calls = []
    generator = torch.Generator().manual_seed(0)

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return target

    result = sample(oracle, cfg, "sample", torch.zeros_like(target), lambda i: torch.randn(target.shape, generator=generator))
    assert torch.allclose(result, target)
    assert calls == sampling_timesteps(cfg) and 1 <= len(calls) <= 4


def test_strength_starts_from_the_guide() -> None:
    cfg = SamplerConfig(scheduler="DDPMScheduler", scheduler_config={"num_train_timesteps": 1000, "timestep_spacing": "trailing"},
                        steps=4, strength=0.5, eta=0.0)
    assert max(sampling_timesteps(cfg)) <= 500


def test_strength_zero_is_the_guide_itself() -> None:
    cfg = SamplerConfig(scheduler="DDPMScheduler", scheduler_config={"num_train_timesteps": 1000, "timestep_spacing": "trailing"},
                        steps=4, strength=0.0, eta=0.0)
    guide = torch.randn(1, 4, 8, 8)

    def never(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("strength 0 must not evaluate the denoiser")

    assert torch.equal(sample(never, cfg, "sample", guide, lambda i: torch.randn_like(guide)), guide)


def tiny_sd_folder(path: Path) -> Path:
    """A diffusers folder shaped like SD 2.1-base at toy size (VAE, UNet with 4 inputs, text encoder)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    preset = load_preset("tiny-sd21")
    torch.manual_seed(1)
    AutoencoderKL(**preset.autoencoder.vae).save_pretrained(path / "vae")
    unet_config = dict(preset.denoiser.unet, in_channels=4)
    UNet2DConditionModel(**unet_config).save_pretrained(path / "unet")
    text = CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                          max_position_embeddings=77, projection_dim=16)
    CLIPTextModel(text).save_pretrained(path / "text_encoder")
    return path


def test_stable_diffusion_folder_is_loaded_and_conv_in_widened(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    from magc.models.loading import load_codec

    folder = tiny_sd_folder(tmp_path / "sd")
    loaded = load_codec("tiny-sd21", allow_untrained=True, device="cpu", sd_weights=folder)
    assert "Stable Diffusion" in loaded.source and not loaded.trained
    original = UNet2DConditionModel.from_pretrained(folder / "unet").conv_in.weight
    widened = loaded.codec.denoiser.unet.conv_in.weight
    assert widened.shape[1] == 8
    assert torch.equal(widened[:, :4], original) and not widened[:, 4:].any()  # the z~ channels start at zero
    assert loaded.codec.denoiser.context.abs().sum() > 0  # the empty-prompt embedding was computed
    cached = list((Path(__import__("os").environ["XDG_DATA_HOME"]) / "magc" / "weights").glob("sd-empty-prompt-*.safetensors"))
    assert cached


def test_missing_stable_diffusion_folder_is_an_input_error(tmp_path: Path) -> None:
    from magc.errors import InputError
    from magc.models.loading import load_codec

    with pytest.raises(InputError, match="not found"):
        load_codec("tiny-sd21", allow_untrained=True, device="cpu", sd_weights=tmp_path / "nowhere")
