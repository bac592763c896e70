"""Quality metrics: PSNR, MS-SSIM, mIoU, and a raster-against-raster comparison in windows.

MS-SSIM is pytorch-msssim's (5 scales, Gaussian window 11, the standard weights) on RGB in
[0, 1]; rasters are compared in 1024 px windows (edge windows may be larger than 1024 so
that none is below MS-SSIM's 161 px minimum) and the scores are averaged weighted by area,
so memory does not grow with raster size. PSNR is over all valid pixels and coded bands at
the raster's own peak value.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pytorch_msssim import ms_ssim

from .raster import RasterReader

MSSSIM_MIN = 161


def psnr(mse: float, peak: float = 1.0) -> float:
    return float("inf") if mse <= 0 else float(10 * np.log10(peak**2 / mse))


def msssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two (C, H, W) arrays in [0, 1] (H, W >= 161)."""
    ta = torch.from_numpy(np.ascontiguousarray(a, np.float32))[None]
    tb = torch.from_numpy(np.ascontiguousarray(b, np.float32))[None]
    return float(ms_ssim(ta, tb, data_range=1.0))


def miou(predicted: np.ndarray, truth: np.ndarray, classes: int, ignore: int = 255) -> tuple[float, list[float]]:
    """Mean IoU over classes present in the truth or the prediction (ignore label skipped)."""
    keep = truth != ignore
    p, t = predicted[keep].astype(np.int64), truth[keep].astype(np.int64)
    confusion = np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    ious = [float(i / u) if u > 0 else float("nan") for i, u in zip(inter, union)]
    present = [x for x in ious if not np.isnan(x)]
    return (float(np.mean(present)) if present else float("nan")), ious


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, classes: int, ignore: int = 255) -> np.ndarray:
    keep = truth != ignore
    p, t = predicted[keep].astype(np.int64), truth[keep].astype(np.int64)
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def iou_per_class(confusion: np.ndarray) -> list[float | None]:
    """IoU of each class (None where it is neither in the truth nor predicted)."""
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return [float(i / u) if u > 0 else None for i, u in zip(inter, union)]


def miou_from_confusion(confusion: np.ndarray) -> float:
    ious = [v for v in iou_per_class(confusion) if v is not None]
    return float(np.mean(ious)) if ious else float("nan")


def _windows(size: int, step: int = 1024) -> list[tuple[int, int]]:
    starts = list(range(0, size, step))
    spans = [(s, min(step, size - s)) for s in starts]
    if len(spans) > 1 and spans[-1][1] < MSSSIM_MIN:
        s0, w0 = spans[-2]
        spans[-2:] = [(s0, w0 + spans[-1][1])]
    return spans


def compare_rasters(original: str | Path, reconstruction: str | Path) -> dict[str, float]:
    """PSNR and MS-SSIM of a reconstruction against its original (same grid)."""
    a, b = RasterReader(original), RasterReader(reconstruction, compute_ranges=False)
    b.info.ranges = a.info.ranges
    if (a.info.width, a.info.height) != (b.info.width, b.info.height):
        raise ValueError("rasters differ in size")
    sq_err, count = 0.0, 0
    ms_sum, ms_area = 0.0, 0
    for y0, h in _windows(a.info.height):
        for x0, w in _windows(a.info.width):
            pa, va = a.read(x0, y0, w, h)
            pb, _ = b.read(x0, y0, w, h)
            sq_err += float(((pa - pb) ** 2)[:, va].sum())
            count += int(va.sum()) * pa.shape[0]
            if h >= MSSSIM_MIN and w >= MSSSIM_MIN and va.mean() > 0.5:
                ca, cb = (pa, pb) if pa.shape[0] == 3 else (np.repeat(pa[:1], 3, 0), np.repeat(pb[:1], 3, 0))
                ms_sum += msssim(ca[:3], cb[:3]) * w * h
                ms_area += w * h
    mse = sq_err / max(count, 1)
    return {"psnr": psnr(mse), "ms_ssim": ms_sum / ms_area if ms_area else float("nan"), "mse": mse}
