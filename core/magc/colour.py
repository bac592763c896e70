"""Per-tile band means: the colour the generative decoder cannot be trusted to restore.

At 0.02-0.03 bpp the decoded tiles of the ``lite`` model drift towards the training set's
mean colour (a mangrove scene, RGB 66/73/76 on average, decodes as 76/74/66: sandy instead
of blue-green), and the drift is already in z~, before the denoiser. One byte per coded band
per tile (0.00002 bpp for a 1024 px tile) tells the decoder each band's mean over the tile's
valid pixels, and the decoder shifts the tile to it before the tiles are blended, so the seams
cross-fade between corrected tiles. Measured on six held-out scenes with a per-scene shift:
PSNR +0.28 dB, reconstruction mIoU +0.01.
"""
from __future__ import annotations

import numpy as np


def band_means(planes: np.ndarray, valid: np.ndarray) -> bytes:
    """Means of (C, h, w) values in [0, 1] over the valid pixels, one byte per band (x 255)."""
    if not valid.any():
        return bytes(len(planes))
    means = _masked_means(planes, valid)
    return bytes(int(v) for v in np.clip(np.rint(means * 255.0), 0, 255))


def _masked_means(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-band float64 means over the valid pixels, without copying the selection."""
    if valid.all():
        return values.mean(axis=(1, 2), dtype=np.float64)
    return values.mean(axis=(1, 2), dtype=np.float64, where=valid[None])


def match_means(values: np.ndarray, core: tuple[slice, slice], valid: np.ndarray, means: bytes) -> np.ndarray:
    """Shift each band of ``values`` (C, h, w, float32, changed in place and returned) so that its
    mean over the valid pixels of the ``core`` region equals the stored one; the whole window
    (core and blend band) moves by the same amount. Values stay in [0, 1]."""
    if not valid.any():
        return values
    target = np.frombuffer(means, np.uint8).astype(np.float64) / 255.0
    shift = target - _masked_means(values[(slice(None),) + core], valid)
    values += shift[:, None, None].astype(values.dtype)
    return np.clip(values, 0.0, 1.0, out=values)
