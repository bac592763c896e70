"""Diffusion sampling loops: few-step (lite) and respaced ancestral DDPM (official MAGC).

The noise schedule comes from a diffusers scheduler (``SamplerConfig.scheduler``); the loop
here only chooses timesteps and applies the posterior step, because tiled decoding must hand
each step *its own* noise: overlapping windows read the same global noise field so that
their overlaps agree and blend without seams. diffusers' ``DDPMScheduler.step`` draws its
noise internally, which would break that.

The step is the DDIM family: ``eta = 1`` is ancestral DDPM with the "fixed_small" posterior
variance (what the official respaced sampler does), ``eta = 0`` is deterministic DDIM.
"""
from __future__ import annotations

from typing import Callable

import torch

from .config import SamplerConfig

NoiseFn = Callable[[int], torch.Tensor]
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Visit = Callable[[int, torch.Tensor], None]


def make_schedule(cfg: SamplerConfig):
    import diffusers

    cls = getattr(diffusers, cfg.scheduler)
    return cls(**cfg.scheduler_config)


def sampling_timesteps(cfg: SamplerConfig) -> list[int]:
    """Descending timesteps, cut to ``strength`` of the schedule when strength < 1."""
    if cfg.timesteps:
        steps = sorted(int(t) for t in cfg.timesteps)[::-1]
    else:
        scheduler = make_schedule(cfg)
        scheduler.set_timesteps(cfg.steps)
        steps = [int(t) for t in scheduler.timesteps]
    if cfg.strength < 1.0:
        total = make_schedule(cfg).config.num_train_timesteps
        steps = [t for t in steps if t <= cfg.strength * (total - 1)] or [steps[-1]]
    return steps


def predict_x0_eps(output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str):
    """(x0, eps) from the network output, for the three diffusers prediction types."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        eps = output
        x0 = (x_t - s * eps) / a
    elif prediction_type == "sample":
        x0 = output
        eps = (x_t - a * x0) / s
    elif prediction_type == "v_prediction":
        x0 = a * x_t - s * output
        eps = s * x_t + a * output
    else:
        raise ValueError(f"unknown prediction type {prediction_type!r}")
    return x0, eps


def output_for_x0(prediction_type: str, x0: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The network output from which ``predict_x0_eps`` recovers ``x0`` at ``x_t`` (the
    training target; for x_t = √ᾱ·x0 + √(1−ᾱ)·n it is x0, n or v as usual)."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "sample":
        return x0
    if prediction_type == "epsilon":
        return (x_t - a * x0) / s
    if prediction_type == "v_prediction":
        return (a * x_t - x0) / s
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def evaluates_denoiser(cfg: SamplerConfig) -> bool:
    """Whether sampling runs the denoiser at all: at strength 0 the guide z~ is the result."""
    return cfg.strength > 0.0


def sample(
    denoise: Denoise,
    cfg: SamplerConfig,
    prediction_type: str,
    start: torch.Tensor,
    noise: NoiseFn,
    eta: float | None = None,
    visit: Visit | None = None,
    visit_only: bool = False,
) -> torch.Tensor:
    """Run the loop; ``start`` is z~ (used when strength < 1), ``noise(i)`` the i-th noise draw.
    Strength 0 moves nothing: z~ is the result. ``visit(t, x_t)`` sees each denoiser input
    (training uses it to learn on the inputs that decoding really builds); with ``visit_only``
    the loop stops once the last input is visited, since only the inputs are wanted, and
    returns that input."""
    if not evaluates_denoiser(cfg):
        return start
    schedule = make_schedule(cfg)
    alphas = schedule.alphas_cumprod.to(torch.float64)
    steps = sampling_timesteps(cfg)
    eta = cfg.eta if eta is None else eta
    t0 = steps[0]
    first_noise = noise(0).to(start.dtype)
    if cfg.strength < 1.0:
        a0 = alphas[t0].to(start.dtype)
        x = a0.sqrt() * start + (1 - a0).sqrt() * first_noise
    else:
        x = first_noise
    for i, t in enumerate(steps):
        if visit is not None:
            visit(t, x)
        if visit_only and i == len(steps) - 1:
            return x
        t_tensor = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        output = denoise(x, t_tensor)
        a_t = alphas[t].to(x.dtype)
        x0, eps = predict_x0_eps(output, x, a_t, prediction_type)
        if i == len(steps) - 1:
            return x0
        a_prev = alphas[steps[i + 1]].to(x.dtype)
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        direction = (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
        x = a_prev.sqrt() * x0 + direction
        if eta > 0:
            x = x + sigma * noise(i + 1).to(x.dtype)
    return x
