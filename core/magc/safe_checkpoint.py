"""Checkpoints that are pickles, loaded without running pickled code.

``weights_only`` first; where that refuses the file (Lightning checkpoints carry
hyper-parameters and callbacks), an allow-list unpickler that resolves only tensor and storage
rebuilders, OrderedDict and plain builtins, and turns every other global into an inert
placeholder, so those extras load as harmless stand-ins instead of running code.
"""
from __future__ import annotations

import _compat_pickle
import importlib
import pickle
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import InputError


class _Inert(dict):
    """Stand-in for a global outside the allow-list: accepts any construction, runs nothing.

    It subclasses dict and takes ``append``/``extend`` so that pickle's SETITEMS/APPENDS on
    Lightning's dict- or list-like objects (AttributeDict, DictConfig, ...) also stay inert.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert()

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch.storage", "UntypedStorage"),
    ("torch.storage", "TypedStorage"),
    ("torch", "UntypedStorage"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes
    *(("builtins", name) for name in (
        "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
        "bytearray", "slice", "range",
    )),
}


def _allowed(module: str, name: str) -> bool:
    if (module, name) in _ALLOWED_GLOBALS:
        return True
    # Typed storages (torch.FloatStorage, ...) that torch's own wrapper did not resolve.
    return module == "torch" and name.endswith("Storage") and isinstance(getattr(torch, name, None), type)


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensor/storage rebuild functions, OrderedDict and plain builtins.

    Every other global becomes ``_Inert``; its name is recorded in ``replaced``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replaced: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        # Protocol <= 2 pickles use Python 2 names (``__builtin__``, ``copy_reg``).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if _allowed(module, name):
            return getattr(importlib.import_module(module), name)
        self.replaced.append(f"{module}.{name}")
        return _Inert


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load needs from a ``pickle_module``: Unpickler, load and a name.
restricted_pickle = types.SimpleNamespace(
    __name__="magc_restricted_pickle", Unpickler=RestrictedUnpickler, load=_restricted_load,
    UnpicklingError=pickle.UnpicklingError,
)


def _torch_load(path: Path, weights_only: bool) -> Any:
    """torch.load, memory-mapped when the file is a zip archive (every torch >= 1.6 save)."""
    mmap = zipfile.is_zipfile(path)
    if weights_only:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle, mmap=mmap)


def _state_dict_of(obj: Any, name: str) -> dict[str, Tensor]:
    """The ``state_dict`` of a Lightning checkpoint, or ``obj`` itself when it is one."""
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise InputError(f"{name}: not a model checkpoint (no state_dict in it)")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise InputError(f"{name}: state_dict has {len(bad)} entries that are not tensors (e.g. {bad[:3]})")
    return dict(state)


def load_checkpoint_state(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a (Lightning) checkpoint, loaded without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        obj = _torch_load(path, weights_only=True)
    except Exception as first:  # noqa: BLE001 - weights_only refuses Lightning's extras; retry restricted
        try:
            obj = _torch_load(path, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not a checkpoint"
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{path.name}: not a PyTorch checkpoint ({reason})") from first
    return _state_dict_of(obj, path.name)
