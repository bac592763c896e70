"""The semantic critic: a small land-cover segmenter that stage 2 learns against.

The map is known at the decoder, so the denoiser can learn to render each class the way it
looks; the latent and distortion losses alone never ask for that (the adapter took mIoU
away, measured). A segmentation loss on the decoded image does. It must not be the
evaluation's own model (``magc.segmentation``): a reconstruction can learn to please one
network, and mIoU would then measure that. The critic is another architecture (plain
convolutions, no ImageNet features), trained from scratch on the training tiles' originals
only, so a gain in the evaluation's mIoU is one that a second, independent model sees too.

The critic sees its input through a fixed Gaussian blur (σ = 2 px), in training and as a
loss. Without it the denoiser pleased the critic with pixel-scale grid textures and colour
casts (measured: mIoU up, PSNR down 1.5 dB, visible checkerboards on buildings); through the
blur its gradient can only ask for changes at the scale of land cover.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import CropSampler, labelled_cross_entropy
from .loop import LoopConfig, run_loop

CRITIC_WIDTHS = (24, 48, 96, 128)  # at strides 2, 4, 8, 16
BLUR_SIGMA = 2.0  # pixels
# Weight of the critic's cross-entropy in stage 2 (0.3 raised mIoU over 0.1; 0.6 gained nothing)
SEMANTIC_WEIGHT = 0.3
# ... and in stage 3, where only the decoder learns: 1.0 took the from-scratch recipe's mIoU at
# rate 0 from 0.76x to 0.84x the originals' for 0.3 dB of PSNR (18 val images, README)
DECODER_SEMANTIC_WEIGHT = 1.0


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A (3, 1, k, k) depthwise Gaussian kernel, k = 2·⌈2σ⌉ + 1."""
    radius = math.ceil(2 * sigma)
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    taps = taps / taps.sum()
    return (taps[:, None] * taps[None, :]).expand(3, 1, -1, -1).contiguous()


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.ReLU())


class SemanticCritic(nn.Module):
    """A four-level encoder with a top-down (FPN-style) decoder; about 0.5 M parameters."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = CRITIC_WIDTHS, blur_sigma: float = BLUR_SIGMA) -> None:
        super().__init__()
        self.register_buffer("blur", gaussian_kernel(blur_sigma), persistent=False)
        self.levels = nn.ModuleList(_block(cin, cout, 2) for cin, cout in zip((3,) + widths[:-1], widths))
        self.lateral = nn.ModuleList(nn.Conv2d(w, widths[0], 1) for w in widths)
        self.classify = nn.Sequential(nn.Conv2d(widths[0], widths[0], 3, 1, 1), nn.ReLU(), nn.Conv2d(widths[0], num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes, H, W) for images (B, 3, H, W) in [0, 1]; H, W divisible by 16."""
        pad = self.blur.shape[-1] // 2
        blurred = F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), self.blur, groups=3)
        features, h = [], blurred * 2 - 1
        for level in self.levels:
            h = level(h)
            features.append(h)
        top = self.lateral[-1](features[-1])
        for lateral, feature in zip(self.lateral[-2::-1], features[-2::-1]):
            top = lateral(feature) + F.interpolate(top, size=feature.shape[2:], mode="bilinear", align_corners=False)
        return F.interpolate(self.classify(top), size=x.shape[2:], mode="bilinear", align_corners=False)


def critic_loss(critic: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, pixel accuracy) of the critic on images in [-1, 1]; unlabelled pixels ignored."""
    return labelled_cross_entropy(critic((images.clamp(-1, 1) + 1) / 2), labels)


def train_critic(sampler: CropSampler, run_dir: Path, num_classes: int, steps: int, batch: int = 8, lr: float = 2e-3,
                 seed: int = 0) -> SemanticCritic:
    """Train on originals (resumable, ``critic.ckpt`` in the run folder); returned frozen."""
    with torch.random.fork_rng():  # the same critic whatever ran before
        torch.manual_seed(seed)
        critic = SemanticCritic(num_classes).train()
    optimizers = {"main": torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=1e-4)}

    def step(i: int) -> dict[str, float]:
        x, _, labels = sampler.batch(batch)
        loss, accuracy = critic_loss(critic, x, labels)
        optimizers["main"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["main"].step()
        return {"loss": loss.item(), "accuracy": accuracy.item()}

    run_loop("critic", run_dir, LoopConfig(steps, lr, warmup=min(100, steps)), {"critic": critic}, optimizers, step,
             rng_state=lambda: {"sampler": sampler.rng.bit_generator.state},
             set_rng_state=lambda s: setattr(sampler.rng.bit_generator, "state", s["sampler"]))
    return critic.eval().requires_grad_(False)
