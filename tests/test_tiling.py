"""Tile grid, shared noise and blending: seamless by construction, memory bounded by a band."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from magc.tiling import Blender, NoiseField, TileGrid, Window, read_padded


@given(st.integers(1, 3000), st.integers(1, 3000), st.sampled_from([128, 256, 512, 1024]))
@settings(max_examples=60, deadline=None)
def test_cores_cover_the_raster_once(width: int, height: int, tile: int) -> None:
    grid = TileGrid(width, height, tile, 64, 16)
    covered = np.zeros((height, width), np.int32) if width * height < 3_000_000 else None
    for r, c in grid.tiles():
        core, coded = grid.core(r, c), grid.coded(r, c)
        assert coded.width % 64 == 0 and coded.width >= core.width and coded.width - core.width < 64
        if grid.cols > 1:
            assert core.width > 2 * grid.blend
        if covered is not None:
            covered[core.y0:core.y0 + core.height, core.x0:core.x0 + core.width] += 1
    if covered is not None:
        assert (covered == 1).all()


def test_blending_reproduces_a_smooth_field_exactly() -> None:
    """Tiles that agree on their overlaps blend back to the same values (no seam)."""
    width, height = 700, 530
    grid = TileGrid(width, height, 128, 64, 16)
    yy, xx = np.mgrid[0:height, 0:width]
    truth = np.stack([np.sin(xx / 37.0) + yy / 500.0, np.cos(yy / 23.0)]).astype(np.float32)
    out = np.full_like(truth, np.nan)

    def write(x0: int, y0: int, values: np.ndarray, valid: np.ndarray) -> None:
        assert np.isnan(out[:, y0:y0 + values.shape[1], x0:x0 + values.shape[2]]).all()  # written once
        out[:, y0:y0 + values.shape[1], x0:x0 + values.shape[2]] = values

    blender = Blender(grid, 2, write)
    peak = 0
    for r, c in grid.tiles():
        w = grid.output(r, c)
        blender.add(r, c, truth[:, w.y0:w.y0 + w.height, w.x0:w.x0 + w.width], np.ones((w.height, w.width), bool))
        peak = max(peak, blender.pending_bytes)
    assert not blender.pending
    np.testing.assert_allclose(out, truth, atol=1e-5)
    # what waits for a neighbour is a band of 2 * blend rows across the raster (plus a few
    # tiles' worth where the band of the row above is not consumed yet): not the raster
    bytes_per_pixel = 2 * 4 + 4 + 1  # 2 channels + weight (float32) + validity
    assert peak <= 2 * 16 * (width + 3 * 128) * bytes_per_pixel


def test_blending_crossfades_disagreeing_tiles() -> None:
    grid = TileGrid(256, 64, 128, 64, 16)
    out = np.zeros((1, 64, 256), np.float32)
    blender = Blender(grid, 1, lambda x0, y0, v, m: out.__setitem__((slice(None), slice(y0, y0 + v.shape[1]), slice(x0, x0 + v.shape[2])), v))
    for c, value in ((0, 0.0), (1, 1.0)):
        w = grid.output(0, c)
        blender.add(0, c, np.full((1, w.height, w.width), value, np.float32), np.ones((w.height, w.width), bool))
    row = out[0, 0]
    assert row[:112].max() == 0 and row[144:].min() == 1
    assert np.all(np.diff(row[112:144]) > 0)  # a monotone ramp across the band


def test_skipped_tile_leaves_neighbours_intact_and_marks_nodata() -> None:
    grid = TileGrid(256, 64, 128, 64, 16)
    out = np.zeros((1, 64, 256), np.float32)
    valid_out = np.zeros((64, 256), bool)

    def write(x0, y0, v, m):
        out[:, y0:y0 + v.shape[1], x0:x0 + v.shape[2]] = v
        valid_out[y0:y0 + v.shape[1], x0:x0 + v.shape[2]] = m

    blender = Blender(grid, 1, write)
    w0 = grid.output(0, 0)
    blender.add(0, 0, np.full((1, w0.height, w0.width), 5.0, np.float32), np.ones((w0.height, w0.width), bool))
    w1 = grid.output(0, 1)
    valid = np.ones((w1.height, w1.width), bool)
    valid[:, 16:] = False  # its core is nodata
    blender.add(0, 1, None, valid)
    assert np.allclose(out[0, :, :128], 5.0)
    assert valid_out[:, :128].all() and not valid_out[:, 128:].any()


def test_noise_field_is_the_same_for_every_window() -> None:
    field = NoiseField(seed=42, channels=4)
    big = field.window(3, Window(-64, -64, 1024, 768))
    small = field.window(3, Window(256, 128, 320, 256))
    lx, ly = (256 + 64) // 8, (128 + 64) // 8
    assert torch.equal(small, big[:, :, ly:ly + 32, lx:lx + 40])
    assert not torch.equal(field.window(4, Window(0, 0, 64, 64)), field.window(3, Window(0, 0, 64, 64)))
    assert not torch.equal(NoiseField(7, 4).window(3, Window(0, 0, 64, 64)), field.window(3, Window(0, 0, 64, 64)))


def test_read_padded_mirrors_outside_the_raster() -> None:
    data = np.arange(30, dtype=np.float32).reshape(1, 5, 6)
    read = lambda x0, y0, w, h: data[:, y0:y0 + h, x0:x0 + w]  # noqa: E731
    out = read_padded(read, Window(-2, -1, 10, 8), 6, 5)
    assert out.shape == (1, 8, 10)
    assert np.array_equal(out[:, 1:6, 2:8], data)
    assert out[0, 0, 2] == data[0, 0, 0] and out[0, 1, 1] == data[0, 0, 0]


def test_grid_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError):
        TileGrid(100, 100, 100, 64, 16)
