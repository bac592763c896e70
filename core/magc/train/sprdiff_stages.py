"""SPRDiff at lite size: the same two-stage recipe as MAGC lite, around a frozen VAE.

Stage 1 (the VAE is the trained lite autoencoder, frozen, as SPRDiff freezes SD's VAE):
the distortion encoder, the fusion and the map-free LCM learn

    loss = λ_k · (D(VAE.dec(z~), x) + γ · ‖z~ − z0‖² / var(z0)) + bpp_k

Stage 2: the latent is scaled to unit variance as in MAGC's stage 2 (unless the VAE came
scaled); then the DARM branches and the UNet learn the diffusion loss on the preset's
prediction type, conditioned on z~, the pixel condition and the semantic conditions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.autoencoder import DECODER_MAP_PATHS
from ..models.sprdiff import SprdiffCodec
from ..errors import InputError, UsageError
from ..models.weights import load_state
from ..sampling import make_schedule, output_for_x0, sampling_timesteps
from .data import CropSampler
from .loop import LoopConfig, run_loop
from .magc_stages import (DENSITY_LR_FACTOR, GAIN_LR_FACTOR, GAMMA_LATENT, bits_per_pixel, distortion,
                          fit_latent_scale, rate_distortion_step)

from .recipe import DEFAULT_VAE


def load_vae(codec: SprdiffCodec, weights: Path = DEFAULT_VAE) -> None:
    """The frozen VAE: the autoencoder of trained weights that hold one of the preset's shape
    (with its latent scale)."""
    if not weights.is_file():
        raise InputError(f"VAE weights not found: {weights}")
    state = {k[len("autoencoder."):]: v.float() for k, v in load_state(weights).items() if k.startswith("autoencoder.")}
    own = codec.autoencoder.state_dict()
    example = DEFAULT_VAE.relative_to(DEFAULT_VAE.parents[2])
    if any(k.startswith(DECODER_MAP_PATHS) for k in set(state) - set(own)):
        raise UsageError(f"{weights} holds an autoencoder whose decoder reads a class map (trained with it), and "
                         f"{codec.preset.name!r} has no map; give --vae-weights with a map-free one "
                         f"(e.g. {example})")
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise UsageError(f"{weights} holds no autoencoder of the shape preset {codec.preset.name!r} wants; give --vae-weights "
                         f"with one (e.g. {example})")
    codec.autoencoder.load_state_dict(state)
    codec.autoencoder.requires_grad_(False).eval()


def train_stage1(codec: SprdiffCodec, sampler: CropSampler, run_dir: Path, cfg: LoopConfig, batch: int) -> None:
    """Expects the frozen VAE already loaded (``load_vae``)."""
    codec.train()
    codec.autoencoder.eval()
    main, gains, densities, aux = [], [], [], []
    for module in (codec.distortion_encoder, codec.fusion, codec.lcm):
        for name, param in module.named_parameters():
            group = aux if name.endswith("quantiles") else gains if "gains" in name else densities if "entropy_bottlenecks" in name else main
            group.append(param)
    optimizers = {
        "main": torch.optim.Adam([{"params": main}, {"params": gains, "lr": cfg.lr * GAIN_LR_FACTOR},
                                  {"params": densities, "lr": cfg.lr * DENSITY_LR_FACTOR}], lr=cfg.lr),
        "aux": torch.optim.Adam(aux, lr=1e-2),
    }
    lambdas = [r.lmbda for r in codec.preset.rates]

    def step(i: int) -> dict[str, float]:
        k = i % len(lambdas)
        x, _, _ = sampler.batch(batch)
        fused, z0 = codec.fused(x)
        out = codec.lcm(fused, (None, None, None), k)
        d_hat, ms_hat, mse_hat = distortion(codec.autoencoder.decode(out["z_tilde"]), x)
        bpp = bits_per_pixel(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
        latent = F.mse_loss(out["z_tilde"], z0) / (z0.detach().var() + 1e-6)
        loss = lambdas[k] * (d_hat + GAMMA_LATENT * latent) + bpp
        aux_loss = rate_distortion_step(loss, optimizers, main + gains + densities, codec.lcm)
        return {"loss": loss.item(), f"bpp_r{k}": bpp.item(), f"msssim_r{k}": 1 - ms_hat.item(),
                f"psnr_r{k}": (-10 * torch.log10(mse_hat)).item(), "latent": latent.item(), "aux": aux_loss}

    modules = {"autoencoder": codec.autoencoder, "distortion_encoder": codec.distortion_encoder, "fusion": codec.fusion, "lcm": codec.lcm}
    run_loop("stage1", run_dir, cfg, modules, optimizers, step,
             rng_state=lambda: {"sampler": sampler.rng.bit_generator.state},
             set_rng_state=lambda s: setattr(sampler.rng.bit_generator, "state", s["sampler"]))


def train_stage2(codec: SprdiffCodec, sampler: CropSampler, run_dir: Path, cfg: LoopConfig, batch: int, seed: int = 0) -> None:
    scale = fit_latent_scale(codec, sampler)
    for frozen in (codec.autoencoder, codec.distortion_encoder, codec.fusion, codec.lcm):
        frozen.requires_grad_(False).eval()
    trainable = [codec.pixel_branch, codec.semantic_branch, codec.unet]
    for module in trainable:
        module.requires_grad_(True).train()
    params = [p for m in trainable for p in m.parameters()]
    optimizers = {"main": torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)}
    alphas = make_schedule(codec.preset.sampler).alphas_cumprod.float()
    inference_steps = torch.tensor(sampling_timesteps(codec.preset.sampler))
    rng = np.random.default_rng(seed)
    prediction = codec.preset.denoiser.prediction_type

    def step(i: int) -> dict[str, float]:
        k = int(rng.integers(len(codec.preset.rates)))
        x, _, _ = sampler.batch(batch)
        with torch.no_grad():
            fused, z0 = codec.fused(x)
            z_tilde = codec.lcm(fused, (None, None, None), k)["z_tilde"]
        _, semantic, pixel = codec.conditions(z_tilde)
        t = torch.randint(0, len(alphas), (batch,))
        t = torch.where(torch.rand(batch) < 0.5, inference_steps[torch.randint(0, len(inference_steps), (batch,))], t)
        a = alphas[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn_like(z0)
        pred = codec.denoise(z_t, t, z_tilde, pixel, semantic)
        loss = F.mse_loss(pred, output_for_x0(prediction, z0, z_t, a))
        optimizers["main"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizers["main"].step()
        return {"loss": loss.item(), "ztilde_mse": float(F.mse_loss(z_tilde, z0)), "scale": scale}

    modules = {name: getattr(codec, name) for name in ("autoencoder", "distortion_encoder", "fusion", "lcm", "pixel_branch", "semantic_branch", "unet")}
    run_loop("stage2", run_dir, cfg, modules, optimizers, step,
             rng_state=lambda: {"sampler": sampler.rng.bit_generator.state, "t": rng.bit_generator.state},
             set_rng_state=lambda s: (setattr(sampler.rng.bit_generator, "state", s["sampler"]), setattr(rng.bit_generator, "state", s["t"])))
