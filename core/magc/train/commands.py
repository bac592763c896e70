"""The commands that make weights and data: ``train``, ``distill-encoder``, ``prepare-data``,
``train-segmentation``.

They share the ``magc`` entry point (``cli.py``) and its error handling; kept apart from the
commands that use weights because their options (recipes, step counts, learning rates) are
their own.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable

from ..errors import InputError, MagcError, UsageError


def add_training_commands(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train a preset (resumable; see the README for the recipe)")
    tr.add_argument("--preset", default="lite")
    tr.add_argument("--data", default="data/dubai")
    tr.add_argument("--run", default=None, help="run folder with checkpoints and logs (default runs/PRESET)")
    tr.add_argument("--stages", default="1,2", help="which stages: 1 rate-distortion, 2 denoiser, "
                                                     "3 decoder reads the map (presets whose decoder does, e.g. lite)")
    tr.add_argument("--export", help="write the trained weights here (safetensors)")
    tr.add_argument("--vae-weights", help="SPRDiff presets: trained weights whose autoencoder is the frozen VAE "
                                           "(default resources/weights/sprdiff-lite.safetensors)")
    tr.add_argument("--steps", help="STAGE1,STAGE2[,CRITIC[,STAGE3]] steps instead of the recipe's "
                                    "(e.g. for a quick trial; CRITIC 0: no semantic critic)")
    tr.add_argument("--semantic-weight", metavar="W[,W3]",
                    help="lite-size MAGC: weight of the semantic critic's cross-entropy in stages 2 and 3; "
                         "two numbers: stage 2's, stage 3's (default 0.3,1.0)")
    tr.add_argument("--lr", metavar="LR[,LR2,LR3]",
                    help="peak learning rate instead of the recipe's: one number for every stage that runs, or stage 1's, "
                         "2's, 3's (lite-size default 4e-4,5e-4,2e-4; SD-size: one number, default 5e-5); "
                         "lower it to add steps to trained weights (--init)")
    tr.add_argument("--init", help="lite-size presets: start from these trained weights of the same preset (fresh optimiser), "
                                   "e.g. to add steps to the shipped weights where the run folder is gone")
    tr.add_argument("--device", default="auto", help="device of the SD-size recipe (the lite-size presets train on the CPU)")
    tr.add_argument("--sd-weights", help="Stable Diffusion 2.1-base diffusers folder (for *-sd21 presets)")

    dist = sub.add_parser("distill-encoder", help="lite-size MAGC: give trained weights the preset's smaller encoder side "
                                                   "(autoencoder encoder + LCM analysis), trained to reproduce theirs "
                                                   "(faster encoding, same decoder)")
    dist.add_argument("--teacher", required=True, help="trained weights of the preset, with the encoder side to reproduce")
    dist.add_argument("--preset", default="lite")
    dist.add_argument("--data", default="data/dubai")
    dist.add_argument("--run", default=None, help="run folder with checkpoint and log (default runs/PRESET-distill)")
    dist.add_argument("--steps", type=int, help="distillation steps (default: the recipe's, 3000)")
    dist.add_argument("--export", help="write the weights with the new encoder here (safetensors)")

    prep = sub.add_parser("prepare-data", help="turn ../shared/data/dubai-aerial into GeoTIFFs + GeoPackage maps + labels")
    prep.add_argument("--source", default="../shared/data/dubai-aerial")
    prep.add_argument("-o", "--output", default="data/dubai")

    seg = sub.add_parser("train-segmentation", help="train the land-cover segmentation model used for mIoU")
    seg.add_argument("--data", default="data/dubai")
    seg.add_argument("--run", default="runs/segmentation")
    seg.add_argument("--steps", type=int, default=600)
    seg.add_argument("--export", default="resources/weights/segmentation.safetensors")


def _number_list(text: str, valid: Callable[[tuple], bool], wanted: str, kind: type = int) -> tuple:
    """A comma-separated list of ``kind`` numbers that ``valid`` accepts, else a UsageError naming ``wanted``."""
    try:
        values = tuple(kind(s) for s in text.split(","))
    except ValueError:
        values = ()
    if not values or not valid(values):
        raise UsageError(f"{wanted}, got {text!r}")
    return values


def _step_counts(text: str) -> tuple[int, ...]:
    return _number_list(text, lambda steps: len(steps) in (2, 3, 4) and min(steps) >= 0,
                        "--steps wants STAGE1,STAGE2[,CRITIC[,STAGE3]] as counts ≥ 0")


def _stage_list(text: str) -> tuple[int, ...]:
    return _number_list(text, lambda stages: set(stages) <= {1, 2, 3}, "--stages wants a list of 1, 2, 3 (e.g. 1,2 or 3)")


def _semantic_weights(text: str) -> tuple[float, float]:
    """Stage 2's and stage 3's critic weight: one number for both, or two."""
    values = _number_list(text, lambda weights: len(weights) in (1, 2) and all(math.isfinite(w) and w >= 0 for w in weights),
                          "--semantic-weight wants W or W2,W3 as numbers ≥ 0", kind=float)
    return (values[0], values[-1])


def _learning_rates(text: str) -> tuple[float, ...]:
    """One peak learning rate for every stage, or stage 1's, 2's, 3's."""
    return _number_list(text, lambda rates: len(rates) in (1, 3) and all(math.isfinite(r) and r > 0 for r in rates),
                        "--lr wants LR or LR1,LR2,LR3 as numbers > 0", kind=float)


def _train(args: argparse.Namespace) -> int:
    from ..config import load_preset
    from .recipe import Recipe, export, train

    run = Path(args.run or f"runs/{args.preset}")
    stages = _stage_list(args.stages)
    steps = _step_counts(args.steps) if args.steps else None
    rates = _learning_rates(args.lr) if args.lr else None
    if load_preset(args.preset).autoencoder.kind == "sd-vae":  # the GPU recipe (accelerate)
        from .sd_stages import SDRecipe, train_sd_preset

        if args.init:
            raise UsageError("--init is for the lite-size presets; the SD-size recipe resumes from its run folder")
        if (steps and len(steps) > 2) or args.semantic_weight is not None:
            raise UsageError("the SD-size recipe has no semantic critic: --steps STAGE1,STAGE2, no --semantic-weight")
        if rates and len(rates) > 1:
            raise UsageError("the SD-size recipe has one learning rate for both stages: --lr LR")
        recipe = SDRecipe(**({"stage1_steps": steps[0], "stage2_steps": steps[1], "warmup": min(steps)} if steps else {}),
                          **({"lr": rates[0]} if rates else {}))
        codec = train_sd_preset(args.preset, Path(args.data), run, args.sd_weights, stages, recipe, device=args.device)
    else:
        overrides = dict(zip(("stage1_steps", "stage2_steps", "critic_steps", "stage3_steps"), steps)) if steps else {}
        if args.vae_weights:
            overrides["vae_weights"] = args.vae_weights
        if args.semantic_weight is not None:
            overrides["semantic_weight"], overrides["stage3_semantic_weight"] = _semantic_weights(args.semantic_weight)
        if rates:
            overrides.update(zip(("stage1_lr", "stage2_lr", "stage3_lr"), rates * (3 // len(rates))))
        recipe = Recipe(**overrides)
        codec = train(args.preset, Path(args.data), run, recipe, stages, init=Path(args.init) if args.init else None)
    if args.export:
        export(codec, codec.preset, Path(args.export), source=" ".join(["magc"] + sys.argv[1:]), run_dir=run)
        print(f"weights written to {args.export}", file=sys.stderr)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .data import prepare_dubai

    source = Path(args.source)
    if not source.is_dir():
        raise MagcError(f"data set not found: {source} (expected ../shared/data/dubai-aerial beside the project)")
    index = prepare_dubai(source, Path(args.output))
    print(f"{len(index)} images prepared in {args.output}", file=sys.stderr)
    return 0


def _distill_encoder(args: argparse.Namespace) -> int:
    from .distill import DistillRecipe, distill_encoder
    from .recipe import export

    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    teacher = Path(args.teacher)
    if not teacher.is_file():
        raise InputError(f"weights not found: {teacher}")
    run = Path(args.run or f"runs/{Path(args.preset).stem}-distill")
    recipe = DistillRecipe(**({"steps": args.steps} if args.steps is not None else {}))
    codec = distill_encoder(teacher, args.preset, Path(args.data), run, recipe)
    if args.export:
        export(codec, codec.preset, Path(args.export), source=" ".join(["magc"] + sys.argv[1:]), run_dir=run)
        print(f"weights written to {args.export}", file=sys.stderr)
    return 0


def _train_segmentation(args: argparse.Namespace) -> int:
    from ..segmentation import evaluate_on_labels, save_segmenter, train_segmentation

    net = train_segmentation(Path(args.data), Path(args.run), steps=args.steps)
    scores = evaluate_on_labels(net, Path(args.data), "val")
    manifest = {"command": " ".join(["magc"] + sys.argv[1:]), "data": "dubai-aerial tiles 1-5 (train); mIoU on tiles 6-7",
                "steps": args.steps, "device": "cpu", "val_miou_on_originals": scores["miou"],
                "classes": "background, building, road, water, vegetation"}
    save_segmenter(net, Path(args.export), manifest)
    print(json.dumps(manifest, indent=1))
    return 0


TRAINING_COMMANDS = {
    "train": _train, "distill-encoder": _distill_encoder, "prepare-data": _prepare,
    "train-segmentation": _train_segmentation,
}
