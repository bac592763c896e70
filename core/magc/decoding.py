"""The decode pipeline, the mirror of ``encoding``: container -> entropy decoding -> synthesis
with the neighbours' latents -> sampling -> blended GeoTIFF windows.

::

    BitstreamReader (every record verified first) ──> codec.decompress ──> ŷ per tile
    ŷ of the 3 x 3 neighbourhood + map window ──> codec.synthesise ──> z~
    z~ ──> codec.generate (noise from one global field) ──> codec.reconstruct
       ──> colour.match_means (the tile's stored band means) ──> Blender ──> GeoTIFF
"""
from __future__ import annotations

import io
import math
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .bitstream import BitstreamReader, Header, TileRecord
from .colour import match_means
from .config import SamplerConfig
from .errors import FormatError, InputError, MapMismatchError, ModelMismatchError, UsageError
from .maps import Grid, open_map
from .mask_coding import unpack_mask
from .models.lcm import CodedTile
from .models.loading import LoadedCodec, load_codec
from .pipeline import CancelCheck, Progress, check_output, coded_index, plane_values, tick
from .raster import RasterInfo, RasterWriter, crs_from_epsg
from .tiling import Blender, NoiseField, TileGrid, Window, read_padded


@dataclass
class DecodeReport:
    output: str
    width: int
    height: int
    tiles: int
    preset: str
    rate: int
    device: str
    seconds: float
    map_checked: bool = True
    strength: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def info_from_header(header: Header) -> RasterInfo:
    crs = crs_from_epsg(header.epsg) if header.epsg else header.crs_wkt
    return RasterInfo(
        width=header.width, height=header.height, bands=header.bands, dtype=header.dtype,
        geotransform=header.geotransform, crs_wkt=crs, nodata=header.nodata,
        alpha_band=header.alpha_band, ranges=header.ranges,
    )


class _EmbeddedMap:
    """The class map stored in the file itself (``--embed-map``), per tile core."""

    def __init__(self, grid: TileGrid, kind: str) -> None:
        self.grid, self.kind = grid, kind
        self.cores: dict[tuple[int, int], np.ndarray] = {}

    def add(self, r: int, c: int, blob: bytes) -> None:
        core = self.grid.core(r, c)
        lead = (3,) if self.kind == "rgb" else ()
        try:
            raw = zlib.decompress(blob)
            self.cores[(r, c)] = np.frombuffer(raw, np.uint8).reshape(lead + (core.height, core.width))
        except (zlib.error, ValueError) as exc:
            raise FormatError("corrupted embedded map") from exc

    def read(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        lead = (3,) if self.kind == "rgb" else ()
        out = np.zeros(lead + (height, width), np.uint8)
        for (r, c), data in self.cores.items():
            core = self.grid.core(r, c)
            t0, l0 = max(core.y0, y0), max(core.x0, x0)
            t1, l1 = min(core.y0 + core.height, y0 + height), min(core.x0 + core.width, x0 + width)
            if t1 > t0 and l1 > l0:
                out[..., t0 - y0:t1 - y0, l0 - x0:l1 - x0] = data[..., t0 - core.y0:t1 - core.y0, l0 - core.x0:l1 - core.x0]
        return out

    def forget_before(self, row: int) -> None:
        for key in [k for k in self.cores if k[0] < row]:
            del self.cores[key]


class _TileDecoder:
    """Entropy-decodes rows ahead and synthesises each tile with its neighbours' latents."""

    def __init__(self, loaded: LoadedCodec, grid: TileGrid, info: RasterInfo, rate: int, seed: int, map_read,
                 sampler: SamplerConfig) -> None:
        self.loaded, self.grid, self.info, self.rate, self.map_read = loaded, grid, info, rate, map_read
        self.sampler = sampler
        self.planes = coded_index(info)
        self.latents: dict[tuple[int, int], list[torch.Tensor] | None] = {}
        self.masks: dict[tuple[int, int], np.ndarray] = {}
        self.means: dict[tuple[int, int], bytes] = {}
        self.noise = NoiseField(seed, loaded.preset.autoencoder.latent_channels)
        self.M = loaded.preset.lcm.M

    def add_record(self, r: int, c: int, record: TileRecord) -> None:
        core = self.grid.core(r, c)
        if record.skipped:
            self.latents[(r, c)] = None
            self.masks[(r, c)] = np.zeros((core.height, core.width), bool)
            return
        if record.mask is not None:
            self.masks[(r, c)] = unpack_mask(record.mask, core.height, core.width)
        if record.means is not None:
            self.means[(r, c)] = record.means
        coded_window = self.grid.coded(r, c)
        shape = (coded_window.height // 32, coded_window.width // 32)
        if len(record.streams) != len(self.planes):
            raise FormatError(f"tile ({r}, {c}) has {len(record.streams)} planes, expected {len(self.planes)}")
        self.latents[(r, c)] = [
            self.loaded.codec.decompress(CodedTile(data, check, shape), self.rate) for data, check in record.streams
        ]

    def forget_before(self, row: int) -> None:
        for key in [k for k in self.latents if k[0] < row]:
            del self.latents[key]
            self.masks.pop(key, None)
            self.means.pop(key, None)

    def core_in_output(self, r: int, c: int) -> tuple[slice, slice]:
        """Where the core lies within ``grid.output(r, c)``."""
        out, core = self.grid.output(r, c), self.grid.core(r, c)
        oy, ox = core.y0 - out.y0, core.x0 - out.x0
        return slice(oy, oy + core.height), slice(ox, ox + core.width)

    def output_valid(self, r: int, c: int) -> np.ndarray:
        """Validity over ``grid.output(r, c)``: this core's mask, True around it (the
        neighbours mark their own cores; the blender AND-s them)."""
        out = self.grid.output(r, c)
        valid = np.ones((out.height, out.width), bool)
        mask = self.masks.get((r, c))
        if mask is not None:
            valid[self.core_in_output(r, c)] = mask
        return valid

    def _neighbourhood(self, r: int, c: int, plane: int, window: Window) -> torch.Tensor:
        """ŷ over a context window, assembled from the (up to 9) tiles it overlaps."""
        f = 32
        canvas = torch.zeros(1, self.M, window.height // f, window.width // f, dtype=torch.float64)
        filled = torch.zeros(window.height // f, window.width // f, dtype=torch.bool)
        for rr in range(max(r - 1, 0), min(r + 2, self.grid.rows)):
            for cc in range(max(c - 1, 0), min(c + 2, self.grid.cols)):
                latents = self.latents.get((rr, cc))
                if latents is None:
                    continue
                coded = self.grid.coded(rr, cc)
                t0, l0 = max(coded.y0, window.y0), max(coded.x0, window.x0)
                t1 = min(coded.y0 + coded.height, window.y0 + window.height)
                l1 = min(coded.x0 + coded.width, window.x0 + window.width)
                if t1 <= t0 or l1 <= l0:
                    continue
                dst = (slice(None), slice(None), slice((t0 - window.y0) // f, (t1 - window.y0) // f), slice((l0 - window.x0) // f, (l1 - window.x0) // f))
                src = (slice(None), slice(None), slice((t0 - coded.y0) // f, (t1 - coded.y0) // f), slice((l0 - coded.x0) // f, (l1 - coded.x0) // f))
                canvas[dst] = latents[plane][src]
                filled[dst[2], dst[3]] = True
        return _extend_edges(canvas, filled)

    def decode(self, r: int, c: int) -> np.ndarray | None:
        """Output pixels (bands, h, w) over ``grid.output(r, c)``; None for a skipped tile."""
        if self.latents.get((r, c)) is None:
            return None
        codec, device = self.loaded.codec, self.loaded.device
        window = self.grid.context(r, c)
        map_window = read_padded(self.map_read, window, self.info.width, self.info.height)
        map_input = codec.map_input(map_window).to(device)
        out, core = self.grid.output(r, c), self.grid.core(r, c)
        oy, ox = out.y0 - window.y0, out.x0 - window.x0
        core_in_out = self.core_in_output(r, c)
        core_valid = self.masks.get((r, c), np.ones((core.height, core.width), bool))
        means = self.means.get((r, c))
        first_band = 0
        values = []
        with torch.no_grad():
            for plane, bands in enumerate(self.planes):
                y_hat = self._neighbourhood(r, c, plane, window).to(device)
                z_tilde = codec.synthesise(y_hat.float(), map_input)
                noise = lambda step, plane=plane: self.noise.window(step * 16 + plane, window).to(device)  # noqa: E731
                image = codec.reconstruct(codec.generate(z_tilde, map_input, noise, self.sampler), map_window)
                plane = plane_values(image[:, :, oy:oy + out.height, ox:ox + out.width], len(bands))
                if means is not None:
                    plane = match_means(plane, core_in_out, core_valid, means[first_band:first_band + len(bands)])
                values.append(plane)
                first_band += len(bands)
        return np.concatenate(values)


def _extend_edges(canvas: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """Fill unfilled rows/columns (outside the raster or skipped tiles) from their nearest filled neighbour."""
    if bool(filled.all()) or not bool(filled.any()):
        return canvas
    rows = filled.any(1)
    cols = filled.any(0)
    row_idx = torch.arange(len(rows))
    col_idx = torch.arange(len(cols))
    filled_rows, filled_cols = row_idx[rows], col_idx[cols]
    nearest_row = filled_rows[(row_idx[:, None] - filled_rows[None]).abs().argmin(1)]
    nearest_col = filled_cols[(col_idx[:, None] - filled_cols[None]).abs().argmin(1)]
    extended = canvas[:, :, nearest_row][:, :, :, nearest_col]
    mask = filled[nearest_row][:, nearest_col]
    return torch.where(mask[None, None], extended, torch.zeros_like(extended))


def decode_raster(
    input: str | Path,
    output: str | Path,
    maps: list[str] | tuple[str, ...] = (),
    device: str = "auto",
    weights: str | Path | None = None,
    ignore_map_mismatch: bool = False,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    codec: LoadedCodec | None = None,
    sd_weights: str | Path | None = None,
    strength: float | None = None,
) -> DecodeReport:
    """Reconstruct a georeferenced GeoTIFF from a .magc file (and the same map layers).

    ``strength`` overrides the preset sampler's (the file does not depend on it): 0 decodes
    z~ directly, without the denoiser (fastest, and the highest PSNR of a briefly trained
    model); 1 generates from pure noise, guided by z~ and the map."""
    start = time.perf_counter()
    input, output = Path(input), Path(output)
    if strength is not None and not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise UsageError(f"strength must be between 0 and 1, not {strength}")
    if not input.is_file():
        raise InputError(f"file not found: {input}")
    check_output(output, [input])
    # The whole file is read and every record verified first: a truncated or corrupted file
    # is reported before any work, and compressed files are small (a 100 Mpx raster at
    # 0.1 bpp is 1.25 MB).
    reader = BitstreamReader(io.BytesIO(input.read_bytes()))
    header = reader.header
    info = info_from_header(header)
    grid = TileGrid(header.width, header.height, header.tile, 0, header.blend)
    records = list(reader.tiles(len(grid), len(info.planes)))
    loaded = codec or load_codec(header.preset, weights, device, allow_untrained=True, sd_weights=sd_weights)
    if loaded.preset.name != header.preset:
        raise ModelMismatchError(f"file was made with preset {header.preset!r}, loaded {loaded.preset.name!r}")
    if loaded.weights_hash != header.weights_hash:
        raise ModelMismatchError(
            f"file was made with other weights of preset {header.preset!r} "
            f"(file {header.weights_hash.hex()}, loaded {loaded.weights_hash.hex()}): load the weights it was encoded with"
        )
    if header.rate >= len(loaded.preset.rates):
        raise FormatError(f"file asks for rate {header.rate}, preset has {len(loaded.preset.rates)}")
    grid = TileGrid(header.width, header.height, header.tile, loaded.preset.tiling.halo, header.blend)
    if header.map_embedded:
        embedded = _EmbeddedMap(grid, loaded.preset.map.kind)
        map_read = embedded.read
    else:
        embedded = None
        map_source = open_map(list(maps), Grid(info.width, info.height, info.geotransform, info.crs_wkt), loaded.preset.map.kind)
        tick(progress, cancel, 0.0, "checking the map")
        if map_source.fingerprint() != header.map_fingerprint and not ignore_map_mismatch:
            raise MapMismatchError(
                "the map layers differ from those the file was encoded with "
                f"({len(maps)} layer(s) given); give the same layers, or --ignore-map-mismatch to decode anyway"
            )
        map_read = map_source.read
    sampler = loaded.preset.sampler if strength is None else replace(loaded.preset.sampler, strength=float(strength))
    decoder = _TileDecoder(loaded, grid, info, header.rate, header.seed, map_read, sampler)
    writer = RasterWriter(output, info)
    try:
        blender = Blender(grid, len(info.coded_bands), writer.write)
        pending = iter(enumerate(records))
        loaded_rows = 0
        done = 0
        for r in range(grid.rows):
            while loaded_rows <= min(r + 1, grid.rows - 1):  # neighbours' latents: one row ahead
                for c in range(grid.cols):
                    _, record = next(pending)
                    if embedded is not None and record.map_bytes is not None:
                        embedded.add(loaded_rows, c, record.map_bytes)
                    decoder.add_record(loaded_rows, c, record)
                loaded_rows += 1
            for c in range(grid.cols):
                tick(progress, cancel, done / len(grid), f"tile {done + 1}/{len(grid)}")
                blender.add(r, c, decoder.decode(r, c), decoder.output_valid(r, c))
                done += 1
            decoder.forget_before(r)
            if embedded is not None:
                embedded.forget_before(r)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    tick(progress, None, 1.0, "done")
    return DecodeReport(
        output=str(output), width=info.width, height=info.height, tiles=len(grid), preset=header.preset,
        rate=header.rate, device=str(loaded.device), seconds=time.perf_counter() - start,
        map_checked=not (ignore_map_mismatch or header.map_embedded), strength=sampler.strength,
    )
