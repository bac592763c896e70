"""Conversion of the released MAGC checkpoint, tested without the 6 GB file.

* full size: every key of the official manifest, as stride-0 views of one-element storages,
  converted and loaded strictly into ``magc-sd21`` built on the meta device;
* exact: a random ``tiny-sd21`` codec written out under the official (LDM) names by an
  independent inverse mapping, converted with ``convert_official`` and compared tensor by
  tensor, then used to compress and decompress;
* safety and bad input: pickled code in the checkpoint never runs; clear one-line errors.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from magc.config import load_preset
from magc.convert import (
    REBUILT_KEYS,
    TEXT_PREFIX,
    check_official_keys,
    convert_official,
    convert_state_dict,
    safe_load_checkpoint,
    schedule_warning,
)
from magc.errors import InputError
from magc.text_context import empty_prompt_context
from magc.models.codec import MagcCodec
from magc.models.weights import load_into, load_state, preset_of, read_metadata

MANIFEST_NAME = "magc_official_keys.json"
MANIFEST_PLACES = [
    os.environ.get("MAGC_OFFICIAL_MANIFEST", ""),
    str(Path(__file__).parent / "data" / MANIFEST_NAME),
    str(Path(__file__).parents[1] / "docs" / MANIFEST_NAME),
    str(Path(__file__).resolve().parents[2] / "shared" / "docs" / MANIFEST_NAME),  # ../shared beside the checkout
]
DTYPES = {"int64": torch.int64, "int32": torch.int32}
TEXT_KEYS, DDPM_KEYS = 294, 13
ENTROPY_TABLES = {
    f"hyper_encoder.{owner}.{name}"
    for owner in ("entropy_bottleneck", "gaussian_conditional")
    for name in ("_quantized_cdf", "_offset", "_cdf_length")
} | {"hyper_encoder.gaussian_conditional.scale_table"}


def official_betas() -> torch.Tensor:
    """The official LDM "linear" schedule (float64, stored as float32)."""
    return (torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2).float()


def official_scale_table() -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(0.11), math.log(256), 64))


@pytest.fixture(scope="module")
def manifest() -> dict:
    for place in MANIFEST_PLACES:
        if place and Path(place).is_file():
            return json.loads(Path(place).read_text())
    pytest.skip(f"{MANIFEST_NAME} not found (set MAGC_OFFICIAL_MANIFEST)")


def expanded_official(manifest: dict, conv_in_channels: int = 8) -> dict[str, torch.Tensor]:
    """Every official tensor as a stride-0 view of one random element (a few KB in all)."""
    state = {}
    for key, shape in manifest["keys"].items():
        dtype = DTYPES.get(manifest["dtypes"].get(key, ""), torch.float32)
        if key == "model.diffusion_model.input_blocks.0.0.weight":
            shape = [shape[0], conv_in_channels, *shape[2:]]
        base = torch.randn(()) if dtype == torch.float32 else torch.zeros((), dtype=dtype)
        state[key] = base.expand(shape)
    state["betas"] = official_betas()
    state["hyper_encoder.gaussian_conditional.scale_table"] = official_scale_table()
    return state


def meta_codec(preset_name: str, monkeypatch: pytest.MonkeyPatch) -> MagcCodec:
    """The codec on the meta device (no memory).

    ``lcm.scale_table`` calls ``.item()`` while the model is built, which the meta device
    refuses; until it computes on the CPU explicitly, the test patches it to do so.
    """
    preset = load_preset(preset_name)
    try:
        with torch.device("meta"):
            return MagcCodec(preset)
    except RuntimeError:
        import magc.models.lcm as lcm

        def cpu_table(low: float, high: float, levels: int) -> list[float]:
            values = torch.linspace(math.log(low), math.log(high), int(levels), device="cpu")
            return [float(v) for v in torch.exp(values)]

        monkeypatch.setattr(lcm, "scale_table", cpu_table)
        with torch.device("meta"):
            return MagcCodec(preset)


# == full size, from the manifest =============================================================
@pytest.fixture(scope="module")
def converted_full(manifest: dict):
    official = expanded_official(manifest, conv_in_channels=12)
    state, report = convert_state_dict(official)
    return official, state, report


def test_every_official_key_is_mapped_or_ignored(manifest: dict, converted_full) -> None:
    official, state, report = converted_full
    keys = set(manifest["keys"])
    assert len(keys) == manifest["total_keys"] == 1850
    assert set(report.mapped) | set(report.ignored) == keys
    assert not set(report.mapped) & set(report.ignored)
    text = {k for k in keys if k.startswith("cond_stage_model.")}
    ddpm = {k for k in keys if "." not in k}
    assert len(text) == TEXT_KEYS and len(ddpm) == DDPM_KEYS
    assert set(report.ignored) == text | ddpm | ENTROPY_TABLES
    assert report.mapped_count == 1850 - TEXT_KEYS - DDPM_KEYS - len(ENTROPY_TABLES) == 1536
    assert report.warnings == []  # official betas and scale table agree with the preset
    assert any("sliced from 12 to 8" in note for note in report.notes)
    assert report.mapped["hyper_encoder.entropy_bottleneck._matrix0"] == "lcm.entropy_bottlenecks.0.matrices.0"
    assert report.mapped["hyper_encoder.entropy_bottleneck._factor3"] == "lcm.entropy_bottlenecks.0.factors.3"
    assert report.mapped["hyper_encoder.sem_conv2.1.g"] == "lcm.map_encoder.sem_conv2.1.g"
    assert report.mapped["control_model.body.8.block2.block.1.b"] == "denoiser.adapter.body.8.block2.block.1.b"
    assert "official keys: 1850; mapped 1536, ignored 314" in report.summary()


def test_full_size_loads_strictly_on_meta(manifest: dict, converted_full, monkeypatch: pytest.MonkeyPatch) -> None:
    official, state, report = converted_full
    codec = meta_codec("magc-sd21", monkeypatch)
    result = codec.load_state_dict(state, strict=False, assign=True)
    assert sorted(result.missing_keys) == sorted(REBUILT_KEYS)
    assert result.unexpected_keys == []
    assert set(state) | set(REBUILT_KEYS) == set(codec.state_dict())
    assert state["denoiser.unet.conv_in.weight"].shape == (320, 8, 3, 3)
    assert state["denoiser.context"].shape == (1, 77, 1024) and torch.isfinite(state["denoiser.context"]).all()
    assert state["lcm.log_gains"].shape == (1, 64) and not state["lcm.log_gains"].any()
    # Nothing was materialised: mapped weights are still views of one element.
    assert state["denoiser.unet.mid_block.attentions.0.proj_in.weight"].stride() == (0, 0)
    assert state["autoencoder.vae.encoder.mid_block.attentions.0.to_q.weight"].shape == (512, 512)


def test_schedule_check_warns_on_other_betas() -> None:
    preset = load_preset("magc-sd21")
    assert schedule_warning(official_betas(), preset) is None
    assert "differ" in schedule_warning(official_betas() * 1.01, preset)
    assert "1000" in schedule_warning(official_betas()[:500], preset)


# == safe loading =============================================================================
TRIGGERED: list[str] = []


def _trigger(tag: str) -> str:
    TRIGGERED.append(tag)
    return tag


class ReduceTrap:
    """Runs ``_trigger`` when unpickled normally."""

    def __reduce__(self):
        return (_trigger, ("reduce",))


class SetstateTrap:
    def __getstate__(self) -> dict:
        return {"x": 1}

    def __setstate__(self, state: dict) -> None:
        TRIGGERED.append("setstate")


def test_safe_load_never_runs_pickled_code(manifest: dict, tmp_path: Path) -> None:
    official = expanded_official(manifest)
    path = tmp_path / "official.ckpt"
    torch.save({"state_dict": official, "hyper_parameters": {"x": ReduceTrap(), "y": SetstateTrap(), "z": {1, 2}},
                "callbacks": {"ModelCheckpoint": {"best": b"bytes"}}, "epoch": 40}, path)
    assert path.stat().st_size < 8_000_000  # only the one-element storages are written
    TRIGGERED.clear()
    state = safe_load_checkpoint(path)
    assert TRIGGERED == []
    assert list(state) == list(official)
    for key in ("betas", "model.diffusion_model.out.2.weight", "hyper_encoder.ga_sem1.norm_0.param_free_norm.num_batches_tracked"):
        assert state[key].dtype == official[key].dtype and torch.equal(state[key], official[key])
    # The traps do fire under an unrestricted load, so the check above means something.
    torch.load(path, weights_only=False)
    assert sorted(TRIGGERED) == ["reduce", "setstate"]
    TRIGGERED.clear()


@pytest.mark.parametrize("zip_format", [True, False])
def test_safe_load_bare_and_legacy_files(tmp_path: Path, zip_format: bool) -> None:
    bare = {p + "w": torch.ones(2) for p in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.",
                                          "control_model.", "hyper_encoder.")}
    torch.save(bare, tmp_path / "bare.ckpt", _use_new_zipfile_serialization=zip_format)
    assert safe_load_checkpoint(tmp_path / "bare.ckpt").keys() == bare.keys()
    TRIGGERED.clear()
    torch.save({"state_dict": bare, "x": ReduceTrap()}, tmp_path / "trap.ckpt", _use_new_zipfile_serialization=zip_format)
    assert safe_load_checkpoint(tmp_path / "trap.ckpt").keys() == bare.keys()
    assert TRIGGERED == []


def test_bad_inputs_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        safe_load_checkpoint(tmp_path / "missing.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(InputError, match="not a PyTorch checkpoint") as info:
        safe_load_checkpoint(text)
    assert "\n" not in str(info.value)
    partial = {"model.diffusion_model.x": torch.ones(1), "first_stage_model.x": torch.ones(1),
               "cond_stage_model.x": torch.ones(1), "control_model.x": torch.ones(1)}
    torch.save({"state_dict": partial}, tmp_path / "partial.ckpt")
    with pytest.raises(InputError, match=r"not a MAGC checkpoint: no hyper_encoder\.\*") as info:
        safe_load_checkpoint(tmp_path / "partial.ckpt")
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="hyper_encoder"):
        check_official_keys(partial)
    zipped = tmp_path / "archive.ckpt"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        safe_load_checkpoint(zipped)
    torch.save({"state_dict": {"a": "not a tensor"}}, tmp_path / "odd.ckpt")
    with pytest.raises(InputError, match="not tensors"):
        safe_load_checkpoint(tmp_path / "odd.ckpt")
    with pytest.raises(InputError, match="not found"):
        convert_official(tmp_path / "missing.ckpt", tmp_path / "out", "tiny-sd21")


# == exact round trip on the tiny preset ======================================================
RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                 "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def unet_ldm_name(key: str, up_block_types: list[str]) -> str:
    """diffusers UNet2DConditionModel key -> LDM ``openaimodel`` key (2 resnets per level)."""
    for new, old in UNET_FIXED.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    parts = key.split(".")
    if parts[0] == "mid_block":
        block = {("resnets", "0"): "middle_block.0", ("attentions", "0"): "middle_block.1",
                 ("resnets", "1"): "middle_block.2"}[(parts[1], parts[2])]
        kind, rest = parts[1], parts[3:]
    else:
        i, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":
            return f"input_blocks.{3 * (i + 1)}.0.op.{parts[-1]}"
        if kind == "upsamplers":
            slot = 2 if up_block_types[i].startswith("CrossAttn") else 1
            return f"output_blocks.{3 * i + 2}.{slot}.conv.{parts[-1]}"
        j, rest = int(parts[3]), parts[4:]
        index = 3 * i + j + 1 if parts[0] == "down_blocks" else 3 * i + j
        side = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
        block = f"{side}.{index}.{0 if kind == 'resnets' else 1}"
    if kind == "resnets":
        rest = [RESNET_TO_LDM[rest[0]], *rest[1:]]
    return ".".join([block, *rest])


VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_ldm_name(key: str, levels: int) -> str:
    """diffusers AutoencoderKL key -> LDM ``autoencoder`` key."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    parts = key.split(".")
    if len(parts) < 3 or parts[1] not in ("down_blocks", "up_blocks", "mid_block"):
        return key
    side, group = parts[0], parts[1]
    if group == "mid_block":
        if parts[2] == "resnets":
            return ".".join([side, "mid", f"block_{int(parts[3]) + 1}", *parts[4:]])
        inner = ".".join(parts[4:])
        for new, old in VAE_ATTENTION.items():
            if inner.startswith(new + "."):
                inner = old + inner[len(new):]
        return f"{side}.mid.attn_1.{inner}"
    level = int(parts[2]) if group == "down_blocks" else levels - 1 - int(parts[2])
    stage = "down" if group == "down_blocks" else "up"
    if parts[3] in ("downsamplers", "upsamplers"):
        return f"{side}.{stage}.{level}.{'downsample' if stage == 'down' else 'upsample'}.conv.{parts[-1]}"
    return ".".join([side, stage, str(level), "block", *parts[4:]])


def lcm_official_name(key: str) -> str:
    rest = key[len("lcm."):]
    if rest.startswith("map_encoder."):
        rest = rest[len("map_encoder."):]
    elif rest.startswith("entropy_bottlenecks.0."):
        tail = rest[len("entropy_bottlenecks.0."):]
        for new, old in (("matrices.", "_matrix"), ("biases.", "_bias"), ("factors.", "_factor")):
            if tail.startswith(new):
                tail = old + tail[len(new):]
        rest = "entropy_bottleneck." + tail
    return "hyper_encoder." + rest


def random_text_tower(width: int, blocks: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower state (official names) with random weights."""
    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    p = TEXT_PREFIX
    tower = {p + "token_embedding.weight": rand(49408, width), p + "positional_embedding": rand(77, width),
             p + "ln_final.weight": 1 + rand(width), p + "ln_final.bias": rand(width),
             p + "text_projection": rand(width, width), p + "logit_scale": torch.tensor(4.6)}
    for i in range(blocks):
        b = f"{p}transformer.resblocks.{i}."
        tower.update({
            b + "ln_1.weight": 1 + rand(width), b + "ln_1.bias": rand(width),
            b + "attn.in_proj_weight": rand(3 * width, width), b + "attn.in_proj_bias": rand(3 * width),
            b + "attn.out_proj.weight": rand(width, width), b + "attn.out_proj.bias": rand(width),
            b + "ln_2.weight": 1 + rand(width), b + "ln_2.bias": rand(width),
            b + "mlp.c_fc.weight": rand(4 * width, width), b + "mlp.c_fc.bias": rand(4 * width),
            b + "mlp.c_proj.weight": rand(width, 4 * width), b + "mlp.c_proj.bias": rand(width),
        })
    return tower


def reference_context(tower: dict[str, torch.Tensor], heads: int) -> torch.Tensor:
    """The same forward with torch's own pre-norm TransformerEncoderLayer (an independent check)."""
    p = "cond_stage_model.model."
    width = tower[p + "positional_embedding"].shape[1]
    blocks = len({k.split(".")[4] for k in tower if ".resblocks." in k})
    tokens = torch.tensor([49406, 49407] + [0] * 75)
    x = (tower[p + "token_embedding.weight"][tokens] + tower[p + "positional_embedding"]).unsqueeze(0)
    mask = torch.full((77, 77), float("-inf")).triu_(1)
    for i in range(blocks - 1):
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True).eval()
        b = f"{p}transformer.resblocks.{i}."
        names = {"self_attn.in_proj_weight": "attn.in_proj_weight", "self_attn.in_proj_bias": "attn.in_proj_bias",
                 "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
                 "linear1.weight": "mlp.c_fc.weight", "linear1.bias": "mlp.c_fc.bias",
                 "linear2.weight": "mlp.c_proj.weight", "linear2.bias": "mlp.c_proj.bias",
                 "norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
                 "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias"}
        layer.load_state_dict({ours: tower[b + theirs] for ours, theirs in names.items()})
        with torch.no_grad():
            x = layer(x, src_mask=mask)
    return nn.functional.layer_norm(x, (width,), tower[p + "ln_final.weight"], tower[p + "ln_final.bias"])


def test_empty_prompt_context_matches_torch_transformer() -> None:
    tower = random_text_tower(128, 3, torch.Generator().manual_seed(1))
    ours = empty_prompt_context(tower, TEXT_PREFIX)  # 128 wide -> 2 heads of 64
    assert ours.shape == (1, 77, 128)
    torch.testing.assert_close(ours, reference_context(tower, heads=2), rtol=1e-4, atol=1e-4)


def randomise(codec: MagcCodec, generator: torch.Generator) -> None:
    """Random weights everywhere (entropy bottleneck: only its quantiles move a little)."""
    with torch.no_grad():
        for name, tensor in codec.state_dict().items():
            if not tensor.is_floating_point() or tensor.numel() == 0 or name.startswith("lcm.log_"):
                continue
            if "entropy_bottlenecks" in name or "gaussian_conditional" in name:
                if name.endswith("quantiles"):
                    tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.3)
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else noise * 0.2)
        codec.lcm.entropy_bottlenecks[0].update(force=True)
        codec.lcm.gaussian_conditional.update()


def official_from(codec: MagcCodec, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A checkpoint with the official names holding ``codec``'s tensors (conv_in widened to 12)."""
    preset = codec.preset
    official: dict[str, torch.Tensor] = {}
    up_types = preset.denoiser.unet["up_block_types"]
    for key, tensor in codec.denoiser.unet.state_dict().items():
        official["model.diffusion_model." + unet_ldm_name(key, up_types)] = tensor.clone()
    conv_in = official["model.diffusion_model.input_blocks.0.0.weight"]
    official["model.diffusion_model.input_blocks.0.0.weight"] = torch.cat([conv_in, torch.randn_like(conv_in[:, :4])], 1)
    levels = len(preset.autoencoder.vae["down_block_types"])
    for key, tensor in codec.autoencoder.vae.state_dict().items():
        if ".attentions." in key and tensor.dim() == 2:
            tensor = tensor[:, :, None, None]  # LDM's attention uses 1x1 convs
        official["first_stage_model." + vae_ldm_name(key, levels)] = tensor.clone()
    for key, tensor in codec.state_dict().items():
        if key.startswith("lcm.") and not key.startswith("lcm.log_"):
            official[lcm_official_name(key)] = tensor.clone()
        elif key.startswith("denoiser.adapter."):
            official["control_model." + key[len("denoiser.adapter."):]] = tensor.clone()
    # Stale tables, to show they are rebuilt rather than copied.
    official["hyper_encoder.entropy_bottleneck._quantized_cdf"].zero_()
    official["hyper_encoder.gaussian_conditional._offset"].zero_()
    official.update(random_text_tower(preset.denoiser.context_dim, 3, generator))
    official.update({name: torch.rand(1000, generator=generator) for name in
                     ("alphas_cumprod", "sqrt_alphas_cumprod", "posterior_variance", "logvar")})
    official["betas"] = official_betas()
    return official


def test_tiny_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    preset = load_preset("tiny-sd21")
    original = MagcCodec(preset).eval()
    randomise(original, generator)
    official = official_from(original, generator)
    ckpt = tmp_path / "v40_step=1-lpips=0.5.ckpt"
    torch.save({"state_dict": official, "epoch": 40, "hyper_parameters": {"trap": ReduceTrap()}}, ckpt)

    logs: list[str] = []
    TRIGGERED.clear()
    weights = convert_official(ckpt, tmp_path / "out", "tiny-sd21", log=logs.append)
    assert TRIGGERED == []
    assert weights == tmp_path / "out" / "tiny-sd21.safetensors" and weights.is_file()
    assert json.loads((tmp_path / "out" / "tiny-sd21.json").read_text()) == preset.to_dict()
    assert not list((tmp_path / "out").glob("*.tmp"))
    meta = read_metadata(weights)
    assert meta["trained"] == "true" and meta["source"] == f"converted from {ckpt.name}"
    assert preset_of(weights).name == "tiny-sd21"
    assert "WARNING" not in logs[0] and "sliced from 12 to 8" in logs[0]

    loaded = MagcCodec(preset_of(weights)).eval()
    load_into(loaded, load_state(weights))
    ours, theirs = loaded.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys()
    # The saved tables are the ones the saved (fp16) parameters give, not the stale ones.
    table_names = ("_quantized_cdf", "_offset", "_cdf_length")
    for bottleneck in (loaded.lcm.entropy_bottlenecks[0], loaded.lcm.gaussian_conditional):
        saved = [getattr(bottleneck, name).clone() for name in table_names]
        bottleneck.update(**({"force": True} if bottleneck is loaded.lcm.entropy_bottlenecks[0] else {}))
        for name, value in zip(table_names, saved):
            assert torch.equal(getattr(bottleneck, name), value), name
    for key, value in theirs.items():
        if key == "denoiser.context" or key.startswith("lcm.entropy_bottlenecks.0._"):
            continue
        expected = value.half().float() if value.is_floating_point() and not key.endswith("scale_table") else value
        assert torch.equal(ours[key], expected), key
    context = reference_context({k: v for k, v in official.items() if k.startswith("cond_stage_model.")}, heads=1)
    torch.testing.assert_close(ours["denoiser.context"], context, rtol=2e-3, atol=2e-3)

    y = torch.randn(1, preset.lcm.M, 4, 4, generator=generator) * 4
    coded, y_hat = loaded.lcm.compress(y, 0)
    assert torch.equal(loaded.lcm.decompress(coded, 0), y_hat)
    assert (y_hat - y.double()).abs().max() <= 0.5 + 1e-6
