"""LPIPS, DISTS and FID, computed only where their pretrained backbones are already on this machine.

Their packages fetch AlexNet, VGG-16 or Inception-v3 weights from the internet on first use.
An evaluation must neither download nor report a number made with random weights, so a
metric is built only when its package imports and its backbone checkpoint already lies in
the torch hub cache (``torch.hub.get_dir()/checkpoints``, i.e. under ``$TORCH_HOME``); a
user puts it there by running the package once with the internet. Otherwise the table says
"unavailable" and why.

All three work on the same 128 px patches as FD-EffNet: LPIPS and DISTS as the mean distance
between co-located patches of original and reconstruction, FID as the Fréchet distance
between Inception pool features of all original and all reconstructed patches (resized to
299 px by pytorch-fid, as FID does).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .perception import frechet_distance

# metric -> (package that computes it, backbone checkpoint its package downloads)
BACKBONES = {
    "lpips": ("lpips", "alexnet-owt-7be5be79.pth"),
    "dists": ("DISTS_pytorch", "vgg16-397923af.pth"),
    "fid": ("pytorch_fid", "pt_inception-2015-12-05-6726825d.pth"),
}
BATCH = 32


def checkpoint_path(metric: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONES[metric][1]


def unavailable_reason(metric: str) -> str | None:
    """None when the metric can be computed here without a download, else why it cannot."""
    package, _ = BACKBONES[metric]
    if importlib.util.find_spec(package) is None:
        return f"unavailable: package {package} not installed"
    if not checkpoint_path(metric).is_file():
        return f"unavailable: no {checkpoint_path(metric).name} in {checkpoint_path(metric).parent}"
    return None


def _lpips() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    import lpips

    with contextlib.redirect_stdout(io.StringIO()):
        net = lpips.LPIPS(net="alex", verbose=False).eval()
    return lambda a, b: net(a * 2 - 1, b * 2 - 1).flatten()  # LPIPS takes [-1, 1]


def _dists() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from DISTS_pytorch import DISTS

    net = DISTS().eval()
    return lambda a, b: net(a, b, batch_average=False).flatten()  # DISTS takes [0, 1]


def _inception() -> Callable[[torch.Tensor], torch.Tensor]:
    from pytorch_fid.inception import InceptionV3

    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()  # resizes to 299, takes [0, 1]
    return lambda x: net(x)[0].flatten(1)


PAIRED = {"lpips": _lpips, "dists": _dists}  # distances between co-located patches


def _batches(patches: np.ndarray):
    for i in range(0, len(patches), BATCH):
        yield torch.from_numpy(np.ascontiguousarray(patches[i:i + BATCH], np.float32))


class PerceptualMetrics:
    """The metrics among LPIPS / DISTS / FID that this machine can compute, and why not the others."""

    def __init__(self, metrics: tuple[str, ...] = ("lpips", "dists", "fid")) -> None:
        self.reasons = {m: reason for m in metrics if (reason := unavailable_reason(m))}
        self.paired = {m: PAIRED[m]() for m in metrics if m in PAIRED and m not in self.reasons}
        self.inception = _inception() if "fid" in metrics and "fid" not in self.reasons else None
        self.metrics = metrics

    @torch.no_grad()
    def paired_sums(self, original: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
        """Sum over co-located patches (N, 3, h, w) in [0, 1] of each paired distance."""
        sums = dict.fromkeys(self.paired, 0.0)
        for a, b in zip(_batches(original), _batches(reconstruction)):
            for metric, distance in self.paired.items():
                sums[metric] += float(distance(a, b).sum())
        return sums

    @torch.no_grad()
    def inception_features(self, patches: np.ndarray) -> np.ndarray | None:
        if self.inception is None:
            return None
        return np.concatenate([self.inception(x).numpy() for x in _batches(patches)])

    def values(self, sums: dict[str, float], patches: int, reference: np.ndarray | None,
               features: np.ndarray | None) -> dict[str, float | str]:
        """One table cell per metric: the value, or "unavailable: why"."""
        cells: dict[str, float | str] = dict(self.reasons)
        for metric in self.paired:
            cells[metric] = sums.get(metric, 0.0) / patches if patches else "unavailable: no patches"
        if self.inception is not None:
            usable = reference is not None and features is not None and min(len(reference), len(features)) > 1
            cells["fid"] = frechet_distance(reference, features) if usable else "unavailable: fewer than 2 patches"
        return {metric: cells[metric] for metric in self.metrics}
