"""Training the Stable-Diffusion-size presets (``magc-sd21``, ``sprdiff-sd21``) on GPUs.

The official two-stage MAGC recipe (method reference §1.4-1.5):

* stage 1: the LCM alone, ``λ_k · MSE(z0, z~) + bpp`` in the scaled SD latent space, VAE
  frozen; AdamW 5e-5, weight decay 0.01, linear warm-up; batch 16 of 256 px tiles;
* stage 2: ε-MSE only, with the official trainable subset: UNet ``attn1``/``attn2``/
  ``proj_in``/``proj_out`` weights and the ``conv_in`` weight, the whole adapter, and the
  LCM's synthesis side (``gs_*``, ``hs_1``); everything else frozen.

What the official code lacks and this adds: the entropy bottlenecks' auxiliary quantile
loss, several rates from one model (the rate k cycles over the preset's operating points),
bf16 mixed precision, gradient checkpointing, and multi-GPU data parallelism through
``accelerate`` (``accelerate launch -m magc.cli train --preset magc-sd21 ...``). Checkpoints
are ``accelerate`` states in the run folder; a run resumes from the newest one.

Memory at batch 16, 256 px (an estimate from parameter counts, not a measurement: no GPU
was available when this was written): stage 2 trains 291 M parameters (fp32 weights,
gradients and two AdamW moments: 4.7 GB) beside 825 M frozen ones (1.7 GB in bf16);
activations with gradient checkpointing stay within a few GB, so about 12-16 GB per GPU.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..maps import render_classes
from ..models.codec import class_fractions
from .data import CropSampler
from .loop import LoopConfig, lr_at
from .magc_stages import bits_per_pixel

STAGE2_UNET_KEYS = ("attn1", "attn2", "proj_in", "proj_out")


@dataclass
class SDRecipe:
    stage1_steps: int = 100_000
    stage2_steps: int = 120_000
    batch: int = 16
    crop: int = 256
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: int = 10_000
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    checkpoint_every: int = 2_000
    seed: int = 0


def stage2_trainable(name: str) -> bool:
    """The official stage-2 subset (ControlLDM.__init__), in this project's module names."""
    if name.startswith("denoiser.unet."):
        inner = name[len("denoiser.unet."):]
        return any(key in inner for key in STAGE2_UNET_KEYS) or inner == "conv_in.weight"
    if name.startswith("denoiser.adapter."):
        return True
    if name.startswith("lcm."):
        inner = name[len("lcm."):]
        return inner.startswith(("gs_", "hs_1"))
    return False


def set_stage(codec: torch.nn.Module, stage: int) -> list[torch.nn.Parameter]:
    """requires_grad as the official recipe sets it; returns the trainable parameters."""
    codec.requires_grad_(False)
    codec.train()
    codec.autoencoder.eval()
    if stage == 2:  # frozen LCM parts keep their BatchNorm statistics, as officially (frozen_module)
        for name, child in codec.lcm.named_children():
            if not name.startswith(("gs_", "hs_1")):
                child.eval()
    trainable = []
    for name, param in codec.named_parameters():
        if stage == 1:
            on = name.startswith("lcm.") and not name.endswith("quantiles")
        else:
            on = stage2_trainable(name)
        param.requires_grad_(on)
        if on:
            trainable.append(param)
    return trainable


def _map_input(codec: torch.nn.Module, classes: torch.Tensor) -> torch.Tensor:
    """The training map as the preset wants it: rendered RGB (official) or class fractions."""
    if codec.preset.map.kind == "rgb":
        import numpy as np

        rendered = np.stack([render_classes(c) for c in classes.numpy()])
        return torch.from_numpy(rendered).float() / 255.0
    return class_fractions(classes, codec.preset.map.num_classes)


def stage1_loss(codec: torch.nn.Module, x: torch.Tensor, map_input: torch.Tensor, rate: int) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        z0 = codec.autoencoder.encode(x)
    out = codec.lcm(z0, codec.lcm.map_encoder(map_input), rate)
    bpp = bits_per_pixel(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
    mse = F.mse_loss(out["z_tilde"].float(), z0.float())
    loss = codec.preset.rates[rate].lmbda * mse + bpp
    return loss, {"bpp": bpp.item(), "mse": mse.item()}


def stage2_loss(codec: torch.nn.Module, x: torch.Tensor, map_input: torch.Tensor, rate: int, alphas: torch.Tensor) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        z0 = codec.autoencoder.encode(x)
    z_tilde = codec.lcm(z0, codec.lcm.map_encoder(map_input), rate)["z_tilde"]
    t = torch.randint(0, len(alphas), (x.shape[0],), device=x.device)
    a = alphas.to(x.device)[t].view(-1, 1, 1, 1)
    noise = torch.randn_like(z0)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    pred = codec.denoiser(z_t, t, z_tilde, map_input)
    loss = F.mse_loss(pred.float(), noise.float())
    return loss, {"eps_mse": loss.item()}


def train_sd(codec: torch.nn.Module, sampler: CropSampler, run_dir: Path, recipe: SDRecipe, stage: int) -> None:
    """One stage with accelerate (any number of GPUs, or the CPU for a smoke test)."""
    from accelerate import Accelerator

    from ..sampling import make_schedule

    accelerator = Accelerator(mixed_precision=recipe.mixed_precision if torch.cuda.is_available() else "no")
    params = set_stage(codec, stage)
    if recipe.gradient_checkpointing and hasattr(codec.denoiser.unet, "enable_gradient_checkpointing"):
        codec.denoiser.unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    aux = torch.optim.Adam([eb.quantiles for eb in codec.lcm.entropy_bottlenecks], lr=1e-3)
    for eb in codec.lcm.entropy_bottlenecks:
        eb.quantiles.requires_grad_(True)
    codec, optimizer, aux = accelerator.prepare(codec, optimizer, aux)
    model = accelerator.unwrap_model(codec)
    steps = recipe.stage1_steps if stage == 1 else recipe.stage2_steps
    cfg = LoopConfig(steps, recipe.lr, warmup=recipe.warmup)
    state_dir = run_dir / f"sd_stage{stage}"
    start = 0
    if (state_dir / "step.json").exists():
        accelerator.load_state(str(state_dir))
        start = json.loads((state_dir / "step.json").read_text())["step"]
    alphas = make_schedule(model.preset.sampler).alphas_cumprod.float()
    rates = len(model.preset.rates)
    log = open(run_dir / f"sd_stage{stage}.log.jsonl", "a") if accelerator.is_main_process else None
    for step in tqdm(range(start, steps), initial=start, total=steps, disable=not accelerator.is_local_main_process):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, classes, _ = sampler.batch(recipe.batch)
        x = x.to(accelerator.device)
        map_input = _map_input(model, classes).to(accelerator.device)
        with accelerator.autocast():
            if stage == 1:
                loss, values = stage1_loss(model, x, map_input, step % rates)
            else:
                loss, values = stage2_loss(model, x, map_input, step % rates, alphas)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        aux_loss = model.lcm.aux_loss()
        aux.zero_grad(set_to_none=True)
        accelerator.backward(aux_loss)
        aux.step()
        if log is not None and (step + 1) % 50 == 0:
            log.write(json.dumps({"step": step + 1, "loss": loss.item(), "aux": aux_loss.item(), **values}) + "\n")
            log.flush()
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == steps:
            accelerator.wait_for_everyone()
            accelerator.save_state(str(state_dir))
            if accelerator.is_main_process:
                (state_dir / "step.json").write_text(json.dumps({"step": step + 1}))
    if log is not None:
        log.close()


def train_sd_preset(preset: str, data_dir: Path, run_dir: Path, sd_weights: str | None, stages: tuple[int, ...],
                    recipe: SDRecipe | None = None, device: str = "auto") -> torch.nn.Module:
    """``magc train --preset magc-sd21 --sd-weights DIR``: SD 2.1-base as the starting point
    (conv_in widened, new channels zero), then the requested stages, resumable."""
    from ..models.loading import load_codec
    from .data import load_index, load_scene

    recipe = recipe or SDRecipe()
    loaded = load_codec(preset, device="cpu", allow_untrained=True, sd_weights=sd_weights)
    codec = loaded.codec
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.json").write_text(json.dumps({"preset": preset, "recipe": recipe.__dict__, "start": loaded.source,
                                                     "device": device}, indent=1))
    scenes = [load_scene(data_dir, item) for item in load_index(data_dir, "train")]
    sampler = CropSampler(scenes, recipe.crop, seed=recipe.seed)
    for stage in stages:
        train_sd(codec, sampler, run_dir, recipe, stage)
    return codec
