"""A resumable training loop: checkpoints, logs, progress bar; the stages supply the losses.

Checkpoints are this project's own files (model, optimiser and sampler state), loaded with
``torch.load(weights_only=True)``: tensors and plain containers only.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..errors import TrainingDiverged, UsageError


@dataclass
class LoopConfig:
    steps: int
    lr: float
    warmup: int = 200
    checkpoint_every: int = 250
    log_every: int = 25
    min_lr_fraction: float = 0.05


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_fraction``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def closes_log_window(step: int, cfg: LoopConfig) -> bool:
    """Whether ``run_loop`` writes a log line after ``step`` (0-based); a step function may
    compute log-only references there and nowhere else."""
    return (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps


WATCHED_LOSSES = ("loss", "aux")  # what a step function reports that must stay finite


def _check_finite(name: str, step: int, values: dict[str, float], saved_step: int, ckpt_path: Path) -> None:
    """Stop at the first non-finite loss: the optimiser has already taken that step, and every
    step after it would train (and checkpoint) NaN weights."""
    bad = {k: values[k] for k in WATCHED_LOSSES if k in values and not math.isfinite(values[k])}
    if bad:
        kept = f"the checkpoint of step {saved_step} in {ckpt_path} is kept" if saved_step else "no checkpoint was written"
        raise TrainingDiverged(f"{name} diverged at step {step + 1} ({', '.join(f'{k} {v}' for k, v in bad.items())}); "
                               f"{kept}, nothing after it was saved: go on from it with a lower learning rate or other weights")


def _resume_modules(ckpt_path: Path, saved: dict[str, dict], modules: dict[str, torch.nn.Module]) -> None:
    """Load the checkpoint's modules, or say why it belongs to another run (an older version of
    this command, or another preset size) instead of a KeyError or a shape dump."""
    try:
        for key, module in modules.items():
            module.load_state_dict(saved[key])
    except (KeyError, RuntimeError) as exc:
        raise UsageError(f"{ckpt_path} is the checkpoint of another run (it holds {', '.join(sorted(saved))}; "
                         f"this run trains {', '.join(modules)}, maybe of another size): give another --run folder, "
                         "or remove it to start again") from exc


def run_loop(
    name: str,
    run_dir: Path,
    cfg: LoopConfig,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    step_fn: Callable[[int], dict[str, float]],
    rng_state: Callable[[], dict] | None = None,
    set_rng_state: Callable[[dict], None] | None = None,
    device_note: str = "cpu",
) -> None:
    """Run ``step_fn(step)`` from the last checkpoint to ``cfg.steps``; ``step_fn`` does the
    forward/backward and returns scalars to log; this loop sets the learning rate, steps the
    optimisers, saves checkpoints and appends JSON lines to ``run_dir/NAME.log.jsonl``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / f"{name}.ckpt"
    log_path = run_dir / f"{name}.log.jsonl"
    start = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        _resume_modules(ckpt_path, state["modules"], modules)
        for key, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        start = int(state["step"])
        if set_rng_state and "rng" in state:
            set_rng_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
    base_lrs = {k: [g.get("base_lr", g["lr"]) for g in o.param_groups] for k, o in optimizers.items()}
    for key, opt in optimizers.items():
        for group, base in zip(opt.param_groups, base_lrs[key]):
            group["base_lr"] = base

    def save(step: int) -> None:
        state = {
            "step": step,
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "torch_rng": torch.get_rng_state(),
        }
        if rng_state:
            state["rng"] = rng_state()
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, ckpt_path)
        nonlocal saved_step
        saved_step = step

    saved_step = start
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=name, dynamic_ncols=True)
    window: dict[str, list[float]] = {}  # some scalars (references) come only on the logged steps
    window_steps, tick = 0, time.time()
    with open(log_path, "a") as log:
        for step in bar:
            scale = lr_at(step, cfg) / cfg.lr
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * scale
            values = step_fn(step)
            _check_finite(name, step, values, saved_step, ckpt_path)
            for key, value in values.items():
                window.setdefault(key, []).append(value)
            window_steps += 1
            if closes_log_window(step, cfg):
                means = {k: float(np.mean(v)) for k, v in window.items()}
                elapsed = time.time() - tick
                means.update(step=step + 1, lr=lr_at(step, cfg), seconds_per_step=elapsed / window_steps, device=device_note)
                log.write(json.dumps(means) + "\n")
                log.flush()
                bar.set_postfix({k: f"{v:.4f}" for k, v in means.items() if k in ("loss", "bpp", "msssim", "psnr", "mse")})
                window, window_steps, tick = {}, 0, time.time()
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                save(step + 1)
