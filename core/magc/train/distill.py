"""Encoder-side distillation: a smaller analysis side for trained lite weights, without stage 1.

Encoding runs two networks on every pixel and its halo: the autoencoder's encoder E (to z0)
and the LCM's analysis transform A (z0 and the map to y). The quality is set by what y goes
through afterwards (the entropy model, the synthesis, the denoiser, the decoder); the
encoder side only has to find the y they were trained on. So a smaller encoder side (the
preset's ``encoder_widths`` / ``encoder_blocks`` and ``analysis_width`` /
``analysis_blocks``) learns to give the trained one's outputs, on the training tiles:

    loss = ‖E_s(x) − E_t(x)‖² / var(E_t(x)) + ‖A_s(E_s(x), m) − A_t(E_t(x), m)‖² / var(A_t(E_t(x), m))

y is what gets quantised, so its error is the one that counts; z0's keeps the encoder near
the teacher's latent space. Encoder-side tensors of the teacher's shape start from the
teacher's, the others from a seeded random initialisation. Everything else (decoder, map
encoder, synthesis, entropy nets and tables, latent scale, denoiser) is the teacher's, bit
for bit, so the decoder of a file is unchanged; only the latents the encoder finds, and so
the bits, move.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PresetConfig, load_preset
from ..errors import UsageError
from ..models.codec import MagcCodec, class_fractions
from ..models.loading import build_codec
from ..models.weights import load_into, load_state, preset_of
from .data import CropSampler, load_index, load_scene
from .loop import LoopConfig, run_loop

ENCODER_SIDE = ("autoencoder.encoder.", "lcm.ga_")  # state-dict prefixes of what only encoding runs


def encoder_side(codec: MagcCodec) -> nn.ModuleList:
    """The modules ``ENCODER_SIDE`` names (the outermost ones, in registration order), so that
    what distillation trains and which tensors it replaces come from one definition."""
    def named(name: str) -> bool:
        return f"{name}.".startswith(ENCODER_SIDE)

    return nn.ModuleList(module for name, module in codec.named_modules()
                         if name and named(name) and not named(name.rpartition(".")[0]))


@dataclass
class DistillRecipe:
    steps: int = 3000
    batch: int = 8
    crop: int = 192
    lr: float = 1e-3
    seed: int = 0


def _student_of(teacher_weights: Path, preset: PresetConfig) -> tuple[MagcCodec, MagcCodec]:
    """(teacher, student): the student is the preset's codec holding every teacher weight off
    the encoder side, and on it those of the teacher's shape (the rest seeded at random)."""
    teacher_preset = preset_of(teacher_weights)
    if teacher_preset.name != preset.name or preset.method != "magc" or preset.autoencoder.kind != "lite":
        raise UsageError(f"{teacher_weights} holds preset {teacher_preset.name!r}; distillation needs trained weights of "
                         f"the lite-size MAGC preset {preset.name!r}")
    state = load_state(teacher_weights)
    teacher = build_codec(teacher_preset)
    load_into(teacher, state)
    student = build_codec(preset)
    shared = {k: v for k, v in state.items() if not k.startswith(ENCODER_SIDE)}
    own = student.state_dict()
    if {k for k in own if not k.startswith(ENCODER_SIDE)} != set(shared):
        raise UsageError(f"{teacher_weights} and preset {preset.name!r} differ beyond the encoder side; "
                         "distillation replaces only the encoder and the LCM analysis")
    same_shape = {k: v for k, v in state.items() if k.startswith(ENCODER_SIDE) and k in own and own[k].shape == v.shape}
    load_into(student, {**shared, **same_shape}, strict=False)
    for codec in (teacher, student):
        codec.eval().requires_grad_(False)
    encoder_side(student).requires_grad_(True).train()  # BatchNorm statistics as stage 1 keeps them
    return teacher, student


def distill_encoder(teacher_weights: Path, preset_name: str, data_dir: Path, run_dir: Path,
                    recipe: DistillRecipe = DistillRecipe()) -> MagcCodec:
    """Train the preset's encoder side to reproduce the teacher's latents (resumable); returns the student codec."""
    preset = load_preset(preset_name)
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        teacher, student = _student_of(teacher_weights, preset)
    run_dir.mkdir(parents=True, exist_ok=True)
    # the LCM's entropy tables are the teacher's: export must keep them (their rebuild is not idempotent)
    (run_dir / "recipe.json").write_text(json.dumps({"preset": preset_name, "recipe": asdict(recipe), "device": "cpu",
                                                     "argv": sys.argv, "init": str(teacher_weights),
                                                     "entropy_tables_from_init": True}, indent=1))
    sampler = CropSampler([load_scene(data_dir, item) for item in load_index(data_dir, "train")], recipe.crop, seed=recipe.seed + 3)
    trained = encoder_side(student)
    optimizers = {"main": torch.optim.AdamW(trained.parameters(), lr=recipe.lr, weight_decay=1e-4)}
    classes = preset.map.num_classes

    def step(i: int) -> dict[str, float]:
        x, maps, _ = sampler.batch(recipe.batch)
        with torch.no_grad():
            sems = teacher.lcm.map_encoder(class_fractions(maps, classes))
            z_teacher = teacher.autoencoder.encode(x)
            y_teacher = teacher.lcm.analysis(z_teacher, sems)
        z_student = student.autoencoder.encode(x)
        y_student = student.lcm.analysis(z_student, sems)  # the student's own analysis
        z_error = F.mse_loss(z_student, z_teacher) / z_teacher.var()
        y_error = F.mse_loss(y_student, y_teacher) / y_teacher.var()
        loss = z_error + y_error
        optimizers["main"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        optimizers["main"].step()
        return {"loss": loss.item(), "z_relative_mse": z_error.item(), "y_relative_mse": y_error.item()}

    run_loop("distill", run_dir, LoopConfig(recipe.steps, recipe.lr, warmup=min(100, recipe.steps)), {"encoder_side": trained},
             optimizers, step, rng_state=lambda: {"sampler": sampler.rng.bit_generator.state},
             set_rng_state=lambda s: setattr(sampler.rng.bit_generator, "state", s["sampler"]))
    return student.eval().requires_grad_(False)
