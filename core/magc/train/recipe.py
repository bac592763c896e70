"""The training recipe behind ``magc train`` / ``make train-lite``: stages 1, 2 and 3, export.

Everything is resumable: each stage keeps a checkpoint in the run folder and continues from
it; a finished stage is skipped. Where the run folder is gone (a fresh machine), ``init``
starts from trained weights of the same preset with a fresh optimiser, so training can go on
from the shipped weights. The defaults are sized so the whole lite recipe fits in
about two hours on the 2-core development CPU (measured there end to end on 2026-12-02:
2 h 22 min, of which stage 1 92 min; stage 3 at its present weight 1.0 took 1.2 min more; see
the README); on a GPU it runs the same steps much faster.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import PresetConfig, load_preset
from ..errors import InputError, UsageError
from ..models.autoencoder import DECODER_MAP_PATHS
from ..models.codec import MagcCodec
from ..models.loading import REPO_WEIGHTS, build_codec
from ..models.weights import load_into, load_state, preset_of, save_weights, write_manifest
from .critic import DECODER_SEMANTIC_WEIGHT, SEMANTIC_WEIGHT, train_critic
from .data import CropSampler, load_index, load_scene
from .loop import LoopConfig


# SPRDiff's frozen VAE: lite stage 1's autoencoder, scaled, as sprdiff-lite holds it (lite itself
# now has a smaller, distilled encoder, which does not fit sprdiff-lite's VAE)
DEFAULT_VAE = REPO_WEIGHTS / "sprdiff-lite.safetensors"


@dataclass
class Recipe:
    stage1_steps: int = 7000
    stage1_batch: int = 8
    stage1_crop: int = 192
    stage1_lr: float = 4e-4
    stage2_steps: int = 2000
    stage2_batch: int = 16
    stage2_crop: int = 192
    stage2_lr: float = 5e-4
    critic_steps: int = 2500  # MAGC stage 2's semantic critic, where it trains on the decode path (0: none)
    semantic_weight: float = SEMANTIC_WEIGHT  # ... and the weight of its cross-entropy in stage 2's path loss
    stage3_steps: int = 1000  # presets whose decoder reads the map: the decoder learns it (``decoder_stage``)
    stage3_semantic_weight: float = DECODER_SEMANTIC_WEIGHT  # the critic's weight in stage 3
    stage3_batch: int = 8
    stage3_lr: float = 2e-4
    seed: int = 0
    vae_weights: str | None = None  # SPRDiff's frozen VAE; None: DEFAULT_VAE


def _load_modules(codec: torch.nn.Module, ckpt: Path) -> None:
    """Every module a stage checkpoint saved (the stages name them after codec attributes)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    for name, module_state in state["modules"].items():
        getattr(codec, name).load_state_dict(module_state)


def _stage_done(ckpt: Path, steps: int) -> bool:
    return ckpt.exists() and int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"]) >= steps


def _start_from(codec: torch.nn.Module, preset: PresetConfig, weights: Path) -> None:
    """Weights trained before the decoder read the map may start a preset whose decoder does
    (its map paths start at zero, so the decoder computes what it did)."""
    if not weights.is_file():
        raise InputError(f"weights not found: {weights}")
    held = preset_of(weights).name
    if held != preset.name:
        raise UsageError(f"{weights} holds preset {held!r}, not {preset.name!r}")
    load_into(codec, load_state(weights), may_lack=tuple("autoencoder." + path for path in DECODER_MAP_PATHS))


def _semantic_critic(preset: PresetConfig, scenes: list, run_dir: Path, recipe: Recipe, weight: float) -> dict:
    """The critic and its weight for stage 2 or 3 (trained once per run folder, then reloaded)."""
    if recipe.critic_steps <= 0:
        return {}
    critic_sampler = CropSampler(scenes, recipe.stage2_crop, seed=recipe.seed + 2)
    critic = train_critic(critic_sampler, run_dir, preset.map.num_classes, recipe.critic_steps, seed=recipe.seed + 2)
    return {"critic": critic, "semantic_weight": weight}


def train(preset_name: str, data_dir: Path, run_dir: Path, recipe: Recipe, stages: tuple[int, ...] = (1, 2),
          init: Path | None = None) -> MagcCodec:
    """Run the requested stages (resuming), leaving checkpoints in ``run_dir``; on the CPU, which
    these lite-size networks are sized for (the SD-size presets train through ``sd_stages``)."""
    torch.manual_seed(recipe.seed)
    preset = load_preset(preset_name)
    stage1_ckpt, stage2_ckpt, stage3_ckpt = (run_dir / f"stage{n}.ckpt" for n in (1, 2, 3))
    if 2 in stages and 1 not in stages and init is None and not stage1_ckpt.exists():
        raise UsageError(f"stage 2 starts from stage 1, and {stage1_ckpt} is missing: run stage 1, or give --init WEIGHTS")
    if 3 in stages and not (preset.method == "magc" and preset.autoencoder.decoder_map_classes):
        raise UsageError(f"stage 3 teaches a decoder to read the map, and preset {preset.name!r} has none that does")
    if 3 in stages and 2 not in stages and init is None and not stage2_ckpt.exists():
        raise UsageError(f"stage 3 starts from stage 2, and {stage2_ckpt} is missing: run stage 2, or give --init WEIGHTS")
    codec = build_codec(preset)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Stage 2 alone on --init weights leaves the LCM as it came, entropy tables included: their
    # rebuild is not idempotent, and would change the bits and the measured bpp per rate.
    tables_from_init = init is not None and 1 not in stages and not stage1_ckpt.exists()
    (run_dir / "recipe.json").write_text(json.dumps({"preset": preset_name, "recipe": recipe.__dict__, "device": "cpu", "argv": sys.argv,
                                                      "init": str(init) if init else None, "entropy_tables_from_init": tables_from_init},
                                                     indent=1))
    if preset.method == "sprdiff":
        from .sprdiff_stages import load_vae, train_stage1 as stage1_fn, train_stage2 as stage2_fn

        if init is None:  # else the --init weights hold the VAE
            load_vae(codec, Path(recipe.vae_weights) if recipe.vae_weights else DEFAULT_VAE)
    else:
        from .magc_stages import train_stage1 as stage1_fn, train_stage2 as stage2_fn
    from .magc_stages import uses_decode_path
    if init is not None:  # after the SPRDiff VAE, which the weights hold too; before the slow scene loading
        _start_from(codec, preset, init)
    scenes = [load_scene(data_dir, item) for item in load_index(data_dir, "train")]
    if 1 in stages and not _stage_done(stage1_ckpt, recipe.stage1_steps):
        sampler = CropSampler(scenes, recipe.stage1_crop, seed=recipe.seed)
        stage1_fn(codec, sampler, run_dir, LoopConfig(recipe.stage1_steps, recipe.stage1_lr), recipe.stage1_batch)
    if 2 in stages:
        if stage1_ckpt.exists():  # else --init gave the starting point (checked above)
            _load_modules(codec, stage1_ckpt)
        if not _stage_done(stage2_ckpt, recipe.stage2_steps):
            with_critic = preset.method == "magc" and uses_decode_path(preset)
            extra = _semantic_critic(preset, scenes, run_dir, recipe, recipe.semantic_weight) if with_critic else {}
            sampler = CropSampler(scenes, recipe.stage2_crop, seed=recipe.seed + 1)
            stage2_fn(codec, sampler, run_dir, LoopConfig(recipe.stage2_steps, recipe.stage2_lr, warmup=100), recipe.stage2_batch, **extra)
        _load_modules(codec, stage2_ckpt)
    if 3 in stages:
        from .decoder_stage import train_decoder

        if 2 not in stages and stage2_ckpt.exists():  # else stage 2 above, or --init (checked above), gave it
            _load_modules(codec, stage2_ckpt)
        if not _stage_done(stage3_ckpt, recipe.stage3_steps):
            sampler = CropSampler(scenes, recipe.stage2_crop, seed=recipe.seed + 3)
            train_decoder(codec, sampler, run_dir, LoopConfig(recipe.stage3_steps, recipe.stage3_lr, warmup=50), recipe.stage3_batch,
                          seed=recipe.seed + 3, **_semantic_critic(preset, scenes, run_dir, recipe, recipe.stage3_semantic_weight))
        _load_modules(codec, stage3_ckpt)
    return codec


def export(codec: torch.nn.Module, preset: PresetConfig, path: Path, source: str, run_dir: Path | None = None) -> Path:
    """Freeze the entropy tables, write the self-describing safetensors file and its manifest
    (preset, command, data, steps per stage, device, sha256; measured bpp per rate is added
    by ``magc eval --update-manifest``)."""
    codec.eval()
    recipe = json.loads((run_dir / "recipe.json").read_text()) if run_dir and (run_dir / "recipe.json").exists() else {}
    if not recipe.get("entropy_tables_from_init"):
        for eb in codec.lcm.entropy_bottlenecks:
            eb.update(force=True, update_quantiles=True)  # exact tails, whatever the aux loss reached
        codec.lcm.gaussian_conditional.update()
    training = {"command": source, "data": "dubai-aerial tiles 1-5 (training); tiles 6-7 held out for evaluation",
                "recipe": recipe.get("recipe"), "device": recipe.get("device", "cpu"),
                **({"started_from": recipe["init"]} if recipe.get("init") else {})}
    save_weights(codec, preset, path, trained=True, source=source, manifest=training)
    write_manifest(path, {"preset": preset.name, **training, "bpp_per_rate": None})
    return path


if __name__ == "__main__":  # pragma: no cover - convenience for long background runs
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--data", default="data/dubai")
    parser.add_argument("--run", default="runs/lite")
    parser.add_argument("--stages", default="1,2")
    args = parser.parse_args()
    train(args.preset, Path(args.data), Path(args.run), Recipe(), tuple(int(s) for s in args.stages.split(",")))
