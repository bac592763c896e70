"""Tile grid, context windows, shared noise and seam-free blending.

Every raster is cut into *cores* (``tile`` px, the last row/column absorbing the remainder so
no core is narrower than the blend band). Each core is coded on its own, but:

* the encoder sees the core plus a ``halo`` of real neighbouring pixels (mirrored at the
  raster's edge), so the latent of a core is continuous with its neighbours';
* the decoder synthesises each core with a halo made of its neighbours' decoded latents and
  the same map, draws its diffusion noise from one global noise field (each latent pixel's
  noise depends only on the seed, the step and its position), and cross-fades adjacent
  outputs over ``2 * blend`` pixels around every core boundary.

``Blender`` holds only what is still waiting for a neighbour (a band of ``2 * blend`` rows
across the raster and one band beside the current tile), so memory does not grow with the
raster's height and grows with its width only by that band.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

ALIGN = 64  # cores are coded at multiples of 64 px (y at 1/32, z at 1/64)


def _cuts(size: int, tile: int, min_last: int) -> list[int]:
    """Core boundaries along one axis; a too-small remainder joins the previous core."""
    cuts = list(range(0, size, tile)) + [size]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] < min_last:
        del cuts[-2]
    return cuts


@dataclass(frozen=True)
class Window:
    x0: int
    y0: int
    width: int
    height: int


@dataclass
class TileGrid:
    width: int
    height: int
    tile: int
    halo: int
    blend: int

    def __post_init__(self) -> None:
        if self.tile % ALIGN or self.halo % 32 or self.tile < 2 * self.blend:
            raise ValueError("tile must be a multiple of 64, halo of 32, and tile >= 2 * blend")
        self.xcuts = _cuts(self.width, self.tile, 2 * self.blend + 1)
        self.ycuts = _cuts(self.height, self.tile, 2 * self.blend + 1)

    @property
    def rows(self) -> int:
        return len(self.ycuts) - 1

    @property
    def cols(self) -> int:
        return len(self.xcuts) - 1

    def __len__(self) -> int:
        return self.rows * self.cols

    def tiles(self) -> Iterator[tuple[int, int]]:
        for r in range(self.rows):
            for c in range(self.cols):
                yield r, c

    def core(self, r: int, c: int) -> Window:
        x0, y0 = self.xcuts[c], self.ycuts[r]
        return Window(x0, y0, self.xcuts[c + 1] - x0, self.ycuts[r + 1] - y0)

    def coded(self, r: int, c: int) -> Window:
        """The core rounded up to multiples of 64 (the part beyond the raster is padding)."""
        core = self.core(r, c)
        return Window(core.x0, core.y0, -(-core.width // ALIGN) * ALIGN, -(-core.height // ALIGN) * ALIGN)

    def context(self, r: int, c: int, halo: int | None = None) -> Window:
        halo = self.halo if halo is None else halo
        coded = self.coded(r, c)
        return Window(coded.x0 - halo, coded.y0 - halo, coded.width + 2 * halo, coded.height + 2 * halo)

    def output(self, r: int, c: int) -> Window:
        """Core plus ``blend`` on every side that has a neighbour."""
        core = self.core(r, c)
        left = self.blend if c > 0 else 0
        top = self.blend if r > 0 else 0
        right = self.blend if c < self.cols - 1 else 0
        bottom = self.blend if r < self.rows - 1 else 0
        return Window(core.x0 - left, core.y0 - top, core.width + left + right, core.height + top + bottom)


def read_padded(read: Callable[[int, int, int, int], np.ndarray], window: Window, width: int, height: int) -> np.ndarray:
    """A window that may reach past the raster: the inside is read, the outside mirrored."""
    x0, y0 = max(window.x0, 0), max(window.y0, 0)
    x1, y1 = min(window.x0 + window.width, width), min(window.y0 + window.height, height)
    inside = read(x0, y0, x1 - x0, y1 - y0)
    pad = [(0, 0)] * (inside.ndim - 2) + [(y0 - window.y0, window.y0 + window.height - y1), (x0 - window.x0, window.x0 + window.width - x1)]
    if not any(p for pair in pad for p in pair):
        return inside
    mode = "symmetric"
    return np.pad(inside, pad, mode=mode)


def fill_invalid(planes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Nodata pixels get the mean of the valid ones, so they cost (almost) no bits."""
    if valid.all():
        return planes
    out = planes.copy()
    for band in out:
        band[~valid] = band[valid].mean() if valid.any() else 0.5
    return out


class NoiseField:
    """Gaussian noise over the whole latent plane: each 64x64 latent block is drawn from a
    generator seeded by (seed, step, block position), so any window gets the same values."""

    BLOCK = 64

    def __init__(self, seed: int, channels: int, downscale: int = 8) -> None:
        self.seed = seed
        self.channels = channels
        self.downscale = downscale

    def _block(self, step: int, by: int, bx: int) -> torch.Tensor:
        key = hashlib.blake2b(f"{self.seed}:{step}:{by}:{bx}".encode(), digest_size=8).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(key, "little") & (2**63 - 1))
        return torch.randn(self.channels, self.BLOCK, self.BLOCK, generator=generator)

    def window(self, step: int, window: Window) -> torch.Tensor:
        d, b = self.downscale, self.BLOCK
        lx0, ly0 = window.x0 // d, window.y0 // d
        lw, lh = window.width // d, window.height // d
        out = torch.empty(1, self.channels, lh, lw)
        for by in range(ly0 // b, (ly0 + lh - 1) // b + 1):
            for bx in range(lx0 // b, (lx0 + lw - 1) // b + 1):
                block = self._block(step, by, bx)
                t0, l0 = max(by * b, ly0), max(bx * b, lx0)
                t1, l1 = min((by + 1) * b, ly0 + lh), min((bx + 1) * b, lx0 + lw)
                out[0, :, t0 - ly0:t1 - ly0, l0 - lx0:l1 - lx0] = block[:, t0 - by * b:t1 - by * b, l0 - bx * b:l1 - bx * b]
        return out


def _ramp_weights(cuts: list[int], index: int, start: int, length: int, blend: int) -> np.ndarray:
    """Weights along one axis for core ``index``: rising over the band at its start
    boundary, falling over the band at its end boundary, 1 elsewhere; neighbours sum to 1."""
    pos = np.arange(start, start + length) + 0.5
    weight = np.ones(length, np.float32)
    if index > 0:
        lo = cuts[index] - blend
        weight = np.minimum(weight, np.clip((pos - lo) / (2 * blend), 0, 1))
    if index < len(cuts) - 2:
        hi = cuts[index + 1] + blend
        weight = np.minimum(weight, np.clip((hi - pos) / (2 * blend), 0, 1))
    return weight.astype(np.float32)  # float64 weights made every blended window float64


def _intervals(cuts: list[int], blend: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """Axis intervals between blend-band edges, each with the cores that contribute to it."""
    edges = [cuts[0]]
    owners: list[tuple[int, ...]] = []
    for i, cut in enumerate(cuts[1:-1], start=1):
        edges += [cut - blend, cut + blend]
        owners += [(i - 1,), (i - 1, i)]
    edges.append(cuts[-1])
    owners.append((len(cuts) - 2,))
    return [(a, b, o) for a, b, o in zip(edges[:-1], edges[1:], owners) if b > a]


class Blender:
    """Accumulates weighted tile outputs and writes each region once all its tiles are in.

    Weights of neighbouring tiles sum to one; the sum of weights is kept anyway, so a tile
    that has no output (entirely nodata) passes ``image=None`` and its neighbours' values
    stand alone. Valid masks are AND-ed: a tile marks only its own core's nodata.
    """

    def __init__(self, grid: TileGrid, channels: int, write: Callable[[int, int, np.ndarray, np.ndarray], None]) -> None:
        self.grid = grid
        self.channels = channels
        self.write = write
        self.xint = _intervals(grid.xcuts, grid.blend) if grid.cols > 1 else [(0, grid.width, (0,))]
        self.yint = _intervals(grid.ycuts, grid.blend) if grid.rows > 1 else [(0, grid.height, (0,))]
        self.pending: dict[tuple[int, int], list[np.ndarray]] = {}

    def add(self, r: int, c: int, image: np.ndarray | None, valid: np.ndarray) -> None:
        """``image`` (C, h, w) and ``valid`` (h, w) cover ``grid.output(r, c)``."""
        out = self.grid.output(r, c)
        g = self.grid
        wy = _ramp_weights(g.ycuts, r, out.y0, out.height, g.blend) if g.rows > 1 else np.ones(out.height, np.float32)
        wx = _ramp_weights(g.xcuts, c, out.x0, out.width, g.blend) if g.cols > 1 else np.ones(out.width, np.float32)
        weight = wy[:, None] * wx[None, :]
        if image is None:
            image = np.zeros((self.channels, out.height, out.width), np.float32)
            weight = np.zeros_like(weight)
        weighted = image * weight[None]
        for iy, (y0, y1, rows) in enumerate(self.yint):
            if r not in rows:
                continue
            for ix, (x0, x1, cols) in enumerate(self.xint):
                if c not in cols:
                    continue
                sy, sx = slice(y0 - out.y0, y1 - out.y0), slice(x0 - out.x0, x1 - out.x0)
                key = (iy, ix)
                if key in self.pending:
                    acc, acc_weight, acc_valid = self.pending[key]
                    acc += weighted[:, sy, sx]
                    acc_weight += weight[sy, sx]
                    acc_valid &= valid[sy, sx]
                else:
                    self.pending[key] = [weighted[:, sy, sx].astype(np.float32), weight[sy, sx].copy(), valid[sy, sx].copy()]
                if r == rows[-1] and c == cols[-1]:
                    acc, acc_weight, acc_valid = self.pending.pop(key)
                    self.write(x0, y0, acc / np.maximum(acc_weight, 1e-6)[None], acc_valid)

    @property
    def pending_bytes(self) -> int:
        return sum(sum(a.nbytes for a in parts) for parts in self.pending.values())
