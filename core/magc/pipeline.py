"""Pieces shared by the encode and decode pipelines (progress, outputs, planes)."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import Cancelled, InputError
from .raster import RasterInfo

Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


def tick(progress: Progress | None, cancel: CancelCheck | None, fraction: float, message: str) -> None:
    """Report progress and honour a cancel request (raises Cancelled)."""
    if cancel is not None and cancel():
        raise Cancelled("cancelled")
    if progress is not None:
        progress(fraction, message)


def temporary(path: Path) -> Path:
    """A hidden sibling name: outputs appear only complete (written there, then renamed)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


def check_output(output: Path, inputs: list[Path]) -> None:
    if not output.parent.exists():
        raise InputError(f"output folder does not exist: {output.parent}")
    if output.is_dir():
        raise InputError(f"output is a folder: {output}")
    for path in inputs:
        if path.exists() and output.exists() and output.resolve() == path.resolve():
            raise InputError(f"output {output} would overwrite an input")


def plane_tensor(planes: np.ndarray, bands: list[int], device: torch.device) -> torch.Tensor:
    """One plane as a (1, 3, h, w) tensor in [-1, 1]; grey planes are replicated."""
    data = planes[bands]
    if data.shape[0] == 1:
        data = np.repeat(data, 3, axis=0)
    return torch.from_numpy(np.ascontiguousarray(data)).to(device).unsqueeze(0) * 2 - 1


def plane_values(image: torch.Tensor, width: int) -> np.ndarray:
    """Model output (1, 3, h, w) in [-1, 1] back to ``width`` bands in [0, 1]."""
    values = (image[0].float().cpu().contiguous().numpy() + 1) / 2  # models may run channels-last
    return values if width == 3 else values.mean(axis=0, keepdims=True)


def coded_index(info: RasterInfo) -> list[list[int]]:
    """Planes as positions in the coded-band stack returned by RasterReader.read."""
    position = {band: i for i, band in enumerate(info.coded_bands)}
    return [[position[b] for b in plane] for plane in info.planes]
