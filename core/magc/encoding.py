"""The encode pipeline: raster windows -> tiles -> analysis -> entropy coding -> container.

::

    raster windows (GDAL, core + halo) ──> codec.analyse (with the map window) ──> y of the core
    y ──> codec.compress (one rANS stream per plane) ──┐
    the core's band means (colour.band_means) ─────────┴──> TileRecord ──> BitstreamWriter
"""
from __future__ import annotations

import os
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .bitstream import BitstreamWriter, Header, TileRecord
from .colour import band_means
from .errors import UsageError
from .maps import Grid, open_map
from .mask_coding import pack_mask
from .models.loading import LoadedCodec, load_codec
from .pipeline import CancelCheck, Progress, check_output, coded_index, plane_tensor, temporary, tick
from .raster import RasterInfo, RasterReader, epsg_of
from .tiling import TileGrid, Window, fill_invalid, read_padded


@dataclass
class EncodeReport:
    output: str
    width: int
    height: int
    file_bytes: int
    header_bytes: int
    stream_bytes: int
    colour_bytes: int
    mask_bytes: int
    map_bytes: int
    framing_bytes: int
    bpp: float
    bpp_without_map: float
    tiles: int
    skipped_tiles: int
    preset: str
    rate: int
    device: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def crop_latent(y: torch.Tensor, halo: int, coded: Window, factor: int = 32) -> torch.Tensor:
    h0 = halo // factor
    return y[:, :, h0:h0 + coded.height // factor, h0:h0 + coded.width // factor]


def _header(info: RasterInfo, loaded: LoadedCodec, rate: int, grid: TileGrid, fingerprint: bytes, seed: int, embed_map: bool) -> Header:
    epsg = epsg_of(info.crs_wkt)
    return Header(
        width=info.width, height=info.height, bands=info.bands, dtype=info.dtype,
        geotransform=info.geotransform, preset=loaded.preset.name, weights_hash=loaded.weights_hash,
        rate=rate, tile=grid.tile, blend=grid.blend, map_fingerprint=fingerprint, seed=seed,
        crs_wkt="" if epsg else info.crs_wkt, epsg=epsg, nodata=info.nodata, alpha_band=info.alpha_band,
        ranges=info.ranges, map_embedded=embed_map,
    )


class _TileEncoder:
    """Reads one tile's context window and codes each plane at a given rate."""

    def __init__(self, reader: RasterReader, map_source, loaded: LoadedCodec, grid: TileGrid) -> None:
        self.reader, self.map_source, self.loaded, self.grid = reader, map_source, loaded, grid
        self.info = reader.info
        self.planes = coded_index(reader.info)

    def analyse(self, r: int, c: int) -> tuple[list[torch.Tensor], np.ndarray, np.ndarray, bytes] | None:
        """Per-plane latents y of the core, the core's valid mask, map and band means (in plane
        order, as the decoder outputs them); None if all nodata."""
        info, grid, codec = self.info, self.grid, self.loaded.codec
        core, coded, window = grid.core(r, c), grid.coded(r, c), grid.context(r, c)
        stacked = read_padded(lambda *w: _stack(self.reader.read(*w)), window, info.width, info.height)
        planes, valid = stacked[:-1], stacked[-1] > 0.5
        oy, ox = core.y0 - window.y0, core.x0 - window.x0
        core_valid = valid[oy:oy + core.height, ox:ox + core.width]
        if not core_valid.any():
            return None
        # planes are consecutive runs of the coded bands, so band order is plane order
        means = band_means(planes[:, oy:oy + core.height, ox:ox + core.width], core_valid)
        planes = fill_invalid(planes, valid)
        map_window = read_padded(self.map_source.read, window, info.width, info.height)
        map_input = codec.map_input(map_window).to(self.loaded.device)
        latents = []
        with torch.no_grad():
            for bands in self.planes:
                y = codec.analyse(plane_tensor(planes, bands, self.loaded.device), map_input)
                latents.append(crop_latent(y, grid.halo, coded))
        core_map = map_window[..., oy:oy + core.height, ox:ox + core.width]
        return latents, core_valid, core_map, means

    def record(self, analysed, rate: int, embed_map: bool) -> TileRecord:
        if analysed is None:
            return TileRecord()
        latents, core_valid, core_map, means = analysed
        record = TileRecord(means=means)
        for y in latents:
            coded = self.loaded.codec.compress(y, rate)
            record.streams.append((coded.data, coded.symbol_check))
        if not core_valid.all():
            record.mask = pack_mask(core_valid)
        if embed_map:
            record.map_bytes = zlib.compress(np.ascontiguousarray(core_map).tobytes(), 9)
        return record


def _stack(read: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    planes, valid = read
    return np.concatenate([planes, valid[None].astype(np.float32)])


def choose_rate(tile_encoder: _TileEncoder, grid: TileGrid, target_bpp: float, embed_map: bool, header_bytes: int, samples: int = 8) -> int:
    """The highest rate whose estimated whole-file bpp meets the target: the tile bytes are
    measured on up to ``samples`` evenly spread tiles and scaled to the raster; the header
    and 8 bytes of framing per tile are added."""
    tiles = list(grid.tiles())
    picks = [tiles[i] for i in np.linspace(0, len(tiles) - 1, min(samples, len(tiles))).round().astype(int)]
    analysed = [(t, tile_encoder.analyse(*t)) for t in dict.fromkeys(picks)]
    sampled_pixels = sum(grid.core(*t).width * grid.core(*t).height for t, _ in analysed)
    pixels = grid.width * grid.height
    chosen = 0
    for rate in range(len(tile_encoder.loaded.preset.rates)):
        payload = sum(len(tile_encoder.record(a, rate, embed_map).encode()[1]) for _, a in analysed)
        total = payload * pixels / max(sampled_pixels, 1) + header_bytes + 8 * len(grid)
        if 8 * total / pixels <= target_bpp:
            chosen = rate
    return chosen


def encode_raster(
    input: str | Path,
    output: str | Path,
    maps: list[str] | tuple[str, ...] = (),
    preset: str = "lite",
    rate: int | None = None,
    bpp: float | None = None,
    device: str = "auto",
    weights: str | Path | None = None,
    allow_untrained: bool = False,
    embed_map: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    codec: LoadedCodec | None = None,
    sd_weights: str | Path | None = None,
) -> EncodeReport:
    """Compress a georeferenced raster (with its map layers) into a .magc file."""
    start = time.perf_counter()
    input, output = Path(input), Path(output)
    reader = RasterReader(input)
    check_output(output, [input, *[Path(m.split("|")[0]) for m in maps]])
    loaded = codec or load_codec(preset, weights, device, allow_untrained, sd_weights=sd_weights)
    info = reader.info
    grid_geo = Grid(info.width, info.height, info.geotransform, info.crs_wkt)
    map_source = open_map(list(maps), grid_geo, loaded.preset.map.kind)
    tiling = loaded.preset.tiling
    grid = TileGrid(info.width, info.height, tiling.tile, tiling.halo, tiling.blend)
    tile_encoder = _TileEncoder(reader, map_source, loaded, grid)
    if rate is not None and bpp is not None:
        raise UsageError("give either a rate or a target bpp, not both")
    if bpp is not None:
        tick(progress, cancel, 0.0, "choosing the rate for the target bpp")
        rate = choose_rate(tile_encoder, grid, bpp, embed_map, len(_header(info, loaded, 0, grid, bytes(8), seed, embed_map).encode()) + 10)
    rate = loaded.preset.default_rate if rate is None else rate
    if not 0 <= rate < len(loaded.preset.rates):
        raise UsageError(f"rate {rate} does not exist; preset {loaded.preset.name} has rates 0..{len(loaded.preset.rates) - 1}")
    tick(progress, cancel, 0.0, "fingerprinting the map")
    header = _header(info, loaded, rate, grid, map_source.fingerprint(), seed, embed_map)
    tmp = temporary(output)
    skipped = 0
    try:
        with open(tmp, "wb") as handle:
            writer = BitstreamWriter(handle, header)
            for i, (r, c) in enumerate(grid.tiles()):
                tick(progress, cancel, i / len(grid), f"tile {i + 1}/{len(grid)}")
                record = tile_encoder.record(tile_encoder.analyse(r, c), rate, embed_map)
                skipped += record.skipped
                writer.write_tile(record)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tick(progress, None, 1.0, "done")
    size = output.stat().st_size
    pixels = info.width * info.height
    framing = size - writer.header_bytes - writer.stream_bytes - writer.colour_bytes - writer.mask_bytes - writer.map_bytes
    return EncodeReport(
        output=str(output), width=info.width, height=info.height, file_bytes=size,
        header_bytes=writer.header_bytes, stream_bytes=writer.stream_bytes, colour_bytes=writer.colour_bytes, mask_bytes=writer.mask_bytes,
        map_bytes=writer.map_bytes, framing_bytes=framing, bpp=8 * size / pixels,
        bpp_without_map=8 * (size - writer.map_bytes) / pixels, tiles=len(grid), skipped_tiles=skipped,
        preset=loaded.preset.name, rate=rate, device=str(loaded.device), seconds=time.perf_counter() - start,
    )
