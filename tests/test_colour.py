"""Band means: the one byte per band and tile that keeps the decoder's colour on the original's."""
from __future__ import annotations

import numpy as np

from magc.colour import band_means, match_means


def test_band_means_ignore_nodata() -> None:
    planes = np.zeros((3, 8, 8), np.float32)
    planes[0, :, :4], planes[1] = 1.0, 0.5
    valid = np.zeros((8, 8), bool)
    valid[:, :4] = True
    assert band_means(planes, valid) == bytes([255, 128, 0])
    assert band_means(planes, np.zeros((8, 8), bool)) == bytes(3)


def test_match_means_moves_the_whole_window_by_the_core_error() -> None:
    rng = np.random.default_rng(0)
    window = rng.uniform(0.2, 0.6, (3, 20, 30)).astype(np.float32)  # core (4..16, 5..25) plus a blend band
    core = (slice(4, 16), slice(5, 25))
    valid = np.ones((12, 20), bool)
    valid[:, :3] = False
    target = bytes([100, 128, 70])
    shifted = match_means(window, core, valid, target)
    got = shifted[(slice(None),) + core][:, valid].mean(axis=1) * 255
    assert np.allclose(got, [100, 128, 70], atol=1e-3)
    moved = shifted - window
    assert np.allclose(moved, moved[:, :1, :1], atol=1e-6)  # one constant per band, blend band included


def test_match_means_keeps_values_in_range() -> None:
    window = np.full((1, 4, 4), 0.9, np.float32)
    window[0, 0, 0] = 0.1
    shifted = match_means(window, (slice(0, 4), slice(0, 4)), np.ones((4, 4), bool), bytes([255]))
    assert shifted.max() == 1.0 and shifted.min() >= 0.0
