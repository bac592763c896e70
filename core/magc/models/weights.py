"""Weights files: safetensors holding a codec's whole state dict plus its preset as metadata.

A weights file is self-describing: ``metadata["magc_preset"]`` is the preset JSON the codec is
rebuilt from, so a model is reproducible from the file alone. No pickle is ever loaded.

Metadata keys: ``magc_format`` ("1"), ``magc_preset`` (JSON), ``trained`` ("true"/"false"),
``source`` (free text: training command or conversion), ``manifest`` (JSON, optional).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..config import PresetConfig, preset_from_dict
from ..errors import InputError

FORMAT_VERSION = "1"
ENTROPY_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def read_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises several types for a bad file
        raise InputError(f"cannot read weights {path}: {exc}") from exc


def preset_of(path: str | Path) -> PresetConfig:
    meta = read_metadata(path)
    if "magc_preset" not in meta:
        raise InputError(f"{path} is not a MAGC weights file (no preset in its metadata)")
    return preset_from_dict(json.loads(meta["magc_preset"]))


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:
        raise InputError(f"cannot read weights {path}: {exc}") from exc


def resize_entropy_buffers(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """compressai's CDF buffers start empty; give them the saved shapes before loading."""
    for name, buffer in list(module.named_buffers()):
        if name.rsplit(".", 1)[-1] in ENTROPY_BUFFERS and name in state and buffer.shape != state[name].shape:
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            setattr(owner, attr, torch.empty_like(state[name]))


def load_into(module: nn.Module, state: dict[str, torch.Tensor], strict: bool = True, may_lack: tuple[str, ...] = ()) -> None:
    """``may_lack``: prefixes of tensors the weights may lack (new parts that start from their
    initial values, e.g. a decoder's map paths before the stage that trains them)."""
    resize_entropy_buffers(module, state)
    own = module.state_dict()
    state = {k: (v.to(own[k].dtype) if k in own and v.is_floating_point() else v) for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(may_lack)] if may_lack else missing
    if strict and (missing or unexpected):
        raise InputError(
            f"weights do not fit the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def save_weights(
    module: nn.Module, preset: PresetConfig, path: str | Path, trained: bool, source: str,
    manifest: dict[str, Any] | None = None, half: bool = True,
) -> None:
    """Atomically write the module's state dict (floats as fp16 unless ``half`` is False)."""
    state = {}
    for key, value in module.state_dict().items():
        value = value.detach().cpu().contiguous()
        if half and value.dtype == torch.float32 and not key.rsplit(".", 1)[-1] in ENTROPY_BUFFERS:
            value = value.half()
        state[key] = value
    metadata = {
        "magc_format": FORMAT_VERSION,
        "magc_preset": json.dumps(preset.to_dict()),
        "trained": "true" if trained else "false",
        "source": source,
    }
    if manifest is not None:
        metadata["manifest"] = json.dumps(manifest)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def manifest_path(weights: Path) -> Path:
    return weights.with_name(weights.name.replace(".safetensors", ".manifest.json"))


def measured_bpp(weights: Path | None) -> dict[int, float] | None:
    """``bpp_per_rate`` of the manifest beside the weights (written by ``magc eval
    --update-manifest``); None where there is no manifest or nothing was measured."""
    if weights is None:
        return None
    try:
        rates = json.loads(manifest_path(Path(weights)).read_text()).get("bpp_per_rate") or {}
        return {int(rate): float(bpp) for rate, bpp in rates.items()} or None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def write_manifest(weights: Path, manifest: dict[str, Any]) -> Path:
    """``NAME.manifest.json`` beside shipped weights, with the file's sha256 and size so that a
    copy (the plugin's download, a user's checkout) can be checked against it."""
    checksum = {"weights": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "bytes": weights.stat().st_size}
    path = manifest_path(weights)
    path.write_text(json.dumps({**checksum, **manifest}, indent=1))
    return path


def state_hash(module: nn.Module) -> bytes:
    """8-byte identity of the weights (sorted names, dtypes, shapes and bytes).

    The header of every file carries it, so decoding with other weights is refused instead of
    returning garbage.
    """
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(value.dtype).encode())
        digest.update(str(tuple(value.shape)).encode())
        if value.is_floating_point():
            value = value.float()
        digest.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes())
    return digest.digest()[:8]
