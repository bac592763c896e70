"""The two MAGC training stages at lite size (CPU) and their export.

Stage 1 (rate-distortion, autoencoder + LCM, one model for every rate):

    loss = λ_k · D(AE.dec(z~), x) + bpp_k + β · D(AE.dec(z0), x) + γ · ‖z~ − z0‖² / var(z0)
    D = (1 − MS-SSIM) + α · MSE            (images in [0, 1])

(AE.dec also reads the crop's class map where the preset's decoder does, as everywhere below.)

with the rate k cycling over the preset's operating points, and the entropy bottlenecks'
quantiles trained by their auxiliary loss (a separate optimiser, as compressai does). The
β term (on a quarter of the batch) keeps z0 itself decodable, so that it is a sensible
target for stage 2; the γ term is the official stage-1 latent loss. The per-rate gains and
the bottlenecks' densities learn 10x faster than the networks: in a short run they must
travel far (with compressai's defaults the hyper-latent still cost ~5 bits per symbol after
600 steps, 0.019 bpp, more than the whole lowest rate should).

Stage 2 (conditional denoiser, autoencoder and LCM frozen): the latent is first scaled to
unit variance (the scale is folded into the convolutions before and after it, so stage 1's
function is unchanged). Half of each batch takes the usual diffusion loss on the preset's
prediction type (z_t made from z0, timesteps half uniform, half the sampler's). The other
half learns on what decoding really feeds the denoiser, when the sampler starts from z~
(strength < 1): the states of the sampler's own path from re-noised z~, with the target z0

    loss_path = ‖pred − output_for_x0(z0)‖² + D(AE.dec(x̂0), x)

where x̂0 is the prediction as a clean latent and D is stage 1's distortion. Without it the
denoiser read the re-noised z~ as if it came from z0, and its latent-MSE output decoded
smoother than z~ itself (see the README's sampling section). Given a semantic critic (an
independent segmenter, ``critic``), the path half also takes

    + semantic_weight · CE(critic(AE.dec(x̂0)), labels)

so the map, known at the decoder, is rendered as the classes look: neither loss above asks
for that, and without it the adapter took mIoU away. The weight is the recipe's
(``Recipe.semantic_weight``), so that it travels into the run's recipe and the manifest.

What z~ itself would score (``msssim_ztilde``, ``critic_accuracy_ztilde``) is a reference for
the logs only: it is computed on the step that closes a log window, not on every step, so it
is one batch's value beside the window's mean of the path's (compare them over many windows).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim

from ..config import PresetConfig, SamplerConfig
from ..models.codec import MagcCodec, class_fractions
from ..models.sprdiff import SprdiffCodec
from ..sampling import Denoise, evaluates_denoiser, make_schedule, output_for_x0, predict_x0_eps, sample, sampling_timesteps
from .critic import SEMANTIC_WEIGHT, critic_loss
from .data import CropSampler
from .loop import LoopConfig, closes_log_window, run_loop

ALPHA_MSE = 10.0
BETA_AE = 1.0
GAMMA_LATENT = 0.1
DECODE_PATH_FRACTION = 2  # stage 2: 1/2 of each batch learns on the denoiser inputs that decoding builds from z~
PATH_DISTORTION_WEIGHT = 1.0  # ... and its decoded prediction is judged by stage 1's D, not only by latent MSE


def distortion(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(D, 1 − MS-SSIM, MSE) for images in [-1, 1]."""
    a, b = (x_hat.clamp(-1, 1) + 1) / 2, (x + 1) / 2
    ms = 1 - ms_ssim(a, b, data_range=1.0, size_average=True)
    mse = F.mse_loss(a, b)
    return ms + ALPHA_MSE * mse, ms, mse


def bits_per_pixel(likelihoods: dict[str, torch.Tensor], pixels: int) -> torch.Tensor:
    return sum(-torch.log2(lik).sum() for lik in likelihoods.values()) / pixels


GAIN_LR_FACTOR = 10.0  # the per-rate gains must travel far in a short run
DENSITY_LR_FACTOR = 10.0  # so must the entropy bottlenecks' learned densities (else z costs ~5 bits/symbol for long)
AE_BRANCH_FRACTION = 4  # the z0 reconstruction term uses 1/4 of the batch (it only keeps z0 decodable)


def _split_params(codec: MagcCodec) -> tuple[list, list, list, list]:
    main, gains, densities, aux = [], [], [], []
    for name, param in list(codec.autoencoder.named_parameters()) + [("lcm." + n, p) for n, p in codec.lcm.named_parameters()]:
        if name.endswith("quantiles"):
            aux.append(param)
        elif "log_gains" in name or "log_hyper_gains" in name:
            gains.append(param)
        elif "entropy_bottlenecks" in name:
            densities.append(param)
        else:
            main.append(param)
    return main, gains, densities, aux


def rate_distortion_step(loss: torch.Tensor, optimizers: dict, params: list, lcm: torch.nn.Module) -> float:
    """Backward + clipped step of the main optimiser, then one step of the quantile (aux) loss."""
    optimizers["main"].zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizers["main"].step()
    aux_loss = lcm.aux_loss()
    optimizers["aux"].zero_grad(set_to_none=True)
    aux_loss.backward()
    optimizers["aux"].step()
    return aux_loss.item()


def train_stage1(codec: MagcCodec, sampler: CropSampler, run_dir: Path, cfg: LoopConfig, batch: int) -> None:
    codec.train()
    codec.denoiser.requires_grad_(False)
    main, gains, densities, aux = _split_params(codec)
    optimizers = {
        "main": torch.optim.Adam([{"params": main}, {"params": gains, "lr": cfg.lr * GAIN_LR_FACTOR},
                                  {"params": densities, "lr": cfg.lr * DENSITY_LR_FACTOR}], lr=cfg.lr),
        "aux": torch.optim.Adam(aux, lr=1e-2),
    }
    lambdas = [r.lmbda for r in codec.preset.rates]
    classes = codec.preset.map.num_classes

    def step(i: int) -> dict[str, float]:
        k = i % len(lambdas)
        x, maps, _ = sampler.batch(batch)
        sems = codec.lcm.map_encoder(class_fractions(maps, classes))
        z0 = codec.autoencoder.encode(x)
        out = codec.lcm(z0, sems, k)
        n_ae = max(1, batch // AE_BRANCH_FRACTION)
        decoded = codec.autoencoder.decode(torch.cat([out["z_tilde"], z0[:n_ae]]), torch.cat([maps, maps[:n_ae]]))
        x_hat, x_ae = decoded[:batch], decoded[batch:]
        d_hat, ms_hat, mse_hat = distortion(x_hat, x)
        d_ae, _, mse_ae = distortion(x_ae, x[:n_ae])
        bpp = bits_per_pixel(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
        latent = F.mse_loss(out["z_tilde"], z0) / (z0.detach().var() + 1e-6)
        loss = lambdas[k] * (d_hat + GAMMA_LATENT * latent) + bpp + BETA_AE * d_ae
        aux_loss = rate_distortion_step(loss, optimizers, main + gains + densities, codec.lcm)
        return {
            "loss": loss.item(), f"bpp_r{k}": bpp.item(), f"msssim_r{k}": 1 - ms_hat.item(),
            f"psnr_r{k}": (-10 * torch.log10(mse_hat)).item(), "psnr_ae": (-10 * torch.log10(mse_ae)).item(),
            "latent": latent.item(), "aux": aux_loss,
        }

    modules = {"autoencoder": codec.autoencoder, "lcm": codec.lcm}
    run_loop("stage1", run_dir, cfg, modules, optimizers, step,
             rng_state=lambda: {"sampler": sampler.rng.bit_generator.state},
             set_rng_state=lambda s: setattr(sampler.rng.bit_generator, "state", s["sampler"]))


@torch.no_grad()
def fit_latent_scale(codec: MagcCodec | SprdiffCodec, sampler: CropSampler, batches: int = 16, batch: int = 8) -> float:
    """Scale the latent to unit variance, which the noise schedule assumes, without changing
    what stage 1 computes (a latent already scaled, e.g. a VAE taken from lite, is kept)."""
    if abs(float(codec.autoencoder.scaling_factor) - 1.0) > 1e-6:
        return float(codec.autoencoder.scaling_factor)
    codec.eval()
    values = [codec.autoencoder.encode(sampler.batch(batch)[0]) for _ in range(batches)]
    scale = 1.0 / float(torch.cat(values).std())
    codec.fold_latent_scale(scale)
    return scale


def decode_path_inputs(denoise: Denoise, sampler: SamplerConfig, prediction_type: str, z_tilde: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, z_t) per sample, drawn from the states the sampler visits when it decodes z~.

    Decoding starts from re-noised z~, not z0; a denoiser that only ever saw z_t made from z0
    reads the noise as detail of z0 and lowers quality below z~'s own (measured on lite).
    """
    states: list[tuple[int, torch.Tensor]] = []
    with torch.no_grad():
        sample(denoise, sampler, prediction_type, z_tilde, lambda i: torch.randn_like(z_tilde),
               visit=lambda t, x: states.append((t, x)), visit_only=True)
    pick = torch.randint(0, len(states), (z_tilde.shape[0],))
    t = torch.tensor([states[p][0] for p in pick.tolist()])
    z_t = torch.stack([states[p][1][b] for b, p in enumerate(pick.tolist())])
    return t, z_t


@torch.no_grad()
def _guide_reference(codec: MagcCodec, critic: torch.nn.Module | None, z_tilde: torch.Tensor, x: torch.Tensor,
                     maps: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """What decoding z~ itself scores, beside the path's logged scores."""
    decoded = codec.autoencoder.decode(z_tilde, maps)
    reference = {"msssim_ztilde": 1 - distortion(decoded, x)[1].item()}
    if critic is not None:
        reference["critic_accuracy_ztilde"] = critic_loss(critic, decoded, labels)[1].item()
    return reference


def uses_decode_path(preset: PresetConfig) -> bool:
    """Whether decoding starts from re-noised z~, so that stage 2 trains on that path."""
    return evaluates_denoiser(preset.sampler) and preset.sampler.strength < 1.0


def train_stage2(codec: MagcCodec, sampler: CropSampler, run_dir: Path, cfg: LoopConfig, batch: int, seed: int = 0,
                 critic: torch.nn.Module | None = None, semantic_weight: float = SEMANTIC_WEIGHT) -> None:
    """``critic`` and ``semantic_weight``: the semantic term of the path half (see above)."""
    scale = fit_latent_scale(codec, sampler)
    codec.autoencoder.requires_grad_(False).eval()
    codec.lcm.requires_grad_(False).eval()
    codec.denoiser.requires_grad_(True).train()
    optimizers = {"main": torch.optim.AdamW(codec.denoiser.parameters(), lr=cfg.lr, weight_decay=0.01)}
    schedule = make_schedule(codec.preset.sampler)
    alphas = schedule.alphas_cumprod.float()
    total = len(alphas)
    inference_steps = torch.tensor(sampling_timesteps(codec.preset.sampler))
    classes = codec.preset.map.num_classes
    rng = np.random.default_rng(seed)
    prediction = codec.preset.denoiser.prediction_type
    sampling_from_guide = uses_decode_path(codec.preset)

    def step(i: int) -> dict[str, float]:
        k = int(rng.integers(len(codec.preset.rates)))
        x, maps, labels = sampler.batch(batch)
        map_input = class_fractions(maps, classes)
        with torch.no_grad():
            z0 = codec.autoencoder.encode(x)
            z_tilde = codec.lcm(z0, codec.lcm.map_encoder(map_input), k)["z_tilde"]
        t = torch.randint(0, total, (batch,))
        use_inference = torch.rand(batch) < 0.5
        t = torch.where(use_inference, inference_steps[torch.randint(0, len(inference_steps), (batch,))], t)
        a = alphas[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn_like(z0)
        n_path = batch // DECODE_PATH_FRACTION if sampling_from_guide else 0
        if n_path:
            t_path, z_path = decode_path_inputs(lambda z, tt: codec.denoiser(z, tt, z_tilde[:n_path], map_input[:n_path]),
                                                codec.preset.sampler, prediction, z_tilde[:n_path])
            t, z_t = torch.cat([t_path, t[n_path:]]), torch.cat([z_path, z_t[n_path:]])
            a = alphas[t].view(-1, 1, 1, 1)
        pred = codec.denoiser(z_t, t, z_tilde, map_input)
        loss = F.mse_loss(pred, output_for_x0(prediction, z0, z_t, a))
        logs = {"ztilde_mse": F.mse_loss(z_tilde, z0).item(), "scale": scale}
        if n_path:  # the decoded image of the path half, judged like stage 1 judges z~'s
            x0_path = predict_x0_eps(pred[:n_path], z_t[:n_path], a[:n_path], prediction)[0]
            decoded_path = codec.autoencoder.decode(x0_path, maps[:n_path])
            d_path, ms_path, _ = distortion(decoded_path, x[:n_path])
            loss = loss + PATH_DISTORTION_WEIGHT * d_path
            logs["msssim_path"] = 1 - ms_path.item()
            if critic is not None:
                ce_path, accuracy_path = critic_loss(critic, decoded_path, labels[:n_path])
                loss = loss + semantic_weight * ce_path
                logs.update(critic_ce_path=ce_path.item(), critic_accuracy_path=accuracy_path.item())
            if closes_log_window(i, cfg):
                logs.update(_guide_reference(codec, critic, z_tilde[:n_path], x[:n_path], maps[:n_path], labels[:n_path]))
        optimizers["main"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.denoiser.parameters(), 1.0)
        optimizers["main"].step()
        logs["loss"] = loss.item()
        return logs

    modules = {"denoiser": codec.denoiser, "autoencoder": codec.autoencoder, "lcm": codec.lcm}
    run_loop("stage2", run_dir, cfg, modules, optimizers, step,
             rng_state=lambda: {"sampler": sampler.rng.bit_generator.state, "t": rng.bit_generator.state},
             set_rng_state=lambda s: (setattr(sampler.rng.bit_generator, "state", s["sampler"]), setattr(rng.bit_generator, "state", s["t"])))
