"""The public calls: encode_raster, decode_raster, roundtrip, read_info, load_codec.

::

    encode: raster windows ──> tiles ──> codec.analyse ──> codec.compress ──> bitstream
    decode: bitstream ──> codec.decompress ──> ŷ neighbourhoods ──> codec.synthesise
            ──> codec.generate ──> codec.reconstruct ──> Blender ──> GeoTIFF windows

Outputs are written under a temporary name in the destination folder and renamed only when
complete; a failure or a cancel removes them. Inputs are only read.
"""
from __future__ import annotations

import io
import json
import os
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .bitstream import BitstreamReader, BitstreamWriter, Header, TileRecord, pack_mask, unpack_mask
from .errors import Cancelled, FormatError, InputError, MapMismatchError, ModelMismatchError, UsageError
from .maps import Grid, open_map
from .models.lcm import CodedTile
from .models.loading import LoadedCodec, load_codec
from .raster import RasterInfo, RasterReader, RasterWriter, crs_from_epsg, epsg_of
from .tiling import Blender, NoiseField, TileGrid, Window, fill_invalid, read_padded

Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]

__all__ = ["encode_raster", "decode_raster", "roundtrip", "read_info", "load_codec", "EncodeReport", "DecodeReport"]


@dataclass
class EncodeReport:
    output: str
    width: int
    height: int
    file_bytes: int
    header_bytes: int
    stream_bytes: int
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

    def to_dict(self) -> dict:
        return asdict(self)


def _tick(progress: Progress | None, cancel: CancelCheck | None, fraction: float, message: str) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled")
    if progress is not None:
        progress(fraction, message)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")


def _check_output(output: Path, inputs: list[Path]) -> None:
    if not output.parent.exists():
        raise InputError(f"output folder does not exist: {output.parent}")
    if output.is_dir():
        raise InputError(f"output is a folder: {output}")
    for path in inputs:
        if path.exists() and output.exists() and output.resolve() == path.resolve():
            raise InputError(f"output {output} would overwrite an input")


def _plane_tensor(planes: np.ndarray, bands: list[int], device: torch.device) -> torch.Tensor:
    """One plane as a (1, 3, h, w) tensor in [-1, 1]; grey planes are replicated."""
    data = planes[bands]
    if data.shape[0] == 1:
        data = np.repeat(data, 3, axis=0)
    return torch.from_numpy(np.ascontiguousarray(data)).to(device).unsqueeze(0) * 2 - 1


def _plane_values(image: torch.Tensor, width: int) -> np.ndarray:
    """Model output (1, 3, h, w) in [-1, 1] back to ``width`` bands in [0, 1]."""
    values = (image[0].float().cpu().numpy() + 1) / 2
    return values if width == 3 else values.mean(axis=0, keepdims=True)


def _coded_index(info: RasterInfo) -> list[list[int]]:
    """Planes as positions in the coded-band stack returned by RasterReader.read."""
    position = {band: i for i, band in enumerate(info.coded_bands)}
    return [[position[b] for b in plane] for plane in info.planes]


def _crop_latent(y: torch.Tensor, halo: int, coded: Window, factor: int = 32) -> torch.Tensor:
    h0 = halo // factor
    return y[:, :, h0:h0 + coded.height // factor, h0:h0 + coded.width // factor]


# -- encode ----------------------------------------------------------------------------------
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
        self.planes = _coded_index(reader.info)

    def analyse(self, r: int, c: int) -> tuple[list[torch.Tensor], np.ndarray, np.ndarray] | None:
        """Per-plane latents y of the core, the core's valid mask and map; None if all nodata."""
        info, grid, codec = self.info, self.grid, self.loaded.codec
        core, coded, window = grid.core(r, c), grid.coded(r, c), grid.context(r, c)
        stacked = read_padded(lambda *w: _stack(self.reader.read(*w)), window, info.width, info.height)
        planes, valid = stacked[:-1], stacked[-1] > 0.5
        oy, ox = core.y0 - window.y0, core.x0 - window.x0
        core_valid = valid[oy:oy + core.height, ox:ox + core.width]
        if not core_valid.any():
            return None
        planes = fill_invalid(planes, valid)
        map_window = read_padded(self.map_source.read, window, info.width, info.height)
        map_input = codec.map_input(map_window).to(self.loaded.device)
        latents = []
        with torch.no_grad():
            for bands in self.planes:
                y = codec.analyse(_plane_tensor(planes, bands, self.loaded.device), map_input)
                latents.append(_crop_latent(y, grid.halo, coded))
        core_map = map_window[..., oy:oy + core.height, ox:ox + core.width]
        return latents, core_valid, core_map

    def record(self, analysed, rate: int, embed_map: bool) -> TileRecord:
        if analysed is None:
            return TileRecord()
        latents, core_valid, core_map = analysed
        record = TileRecord()
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


def choose_rate(tile_encoder: _TileEncoder, grid: TileGrid, target_bpp: float, embed_map: bool, samples: int = 8) -> int:
    """The highest rate whose estimated bpp (on up to ``samples`` tiles) meets the target."""
    tiles = list(grid.tiles())
    picks = [tiles[i] for i in np.linspace(0, len(tiles) - 1, min(samples, len(tiles))).round().astype(int)]
    analysed = [(t, tile_encoder.analyse(*t)) for t in dict.fromkeys(picks)]
    pixels = sum(grid.core(*t).width * grid.core(*t).height for t, _ in analysed)
    rates = len(tile_encoder.loaded.preset.rates)
    chosen = 0
    for rate in range(rates):
        bits = sum(8 * (len(tile_encoder.record(a, rate, embed_map).encode()[1]) + 6) for _, a in analysed)
        if bits / max(pixels, 1) <= target_bpp:
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
    _check_output(output, [input, *[Path(m.split("|")[0]) for m in maps]])
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
        _tick(progress, cancel, 0.0, "choosing the rate for the target bpp")
        rate = choose_rate(tile_encoder, grid, bpp, embed_map)
    rate = loaded.preset.default_rate if rate is None else rate
    if not 0 <= rate < len(loaded.preset.rates):
        raise UsageError(f"rate {rate} does not exist; preset {loaded.preset.name} has rates 0..{len(loaded.preset.rates) - 1}")
    _tick(progress, cancel, 0.0, "fingerprinting the map")
    header = _header(info, loaded, rate, grid, map_source.fingerprint(), seed, embed_map)
    tmp = _temporary(output)
    skipped = 0
    try:
        with open(tmp, "wb") as handle:
            writer = BitstreamWriter(handle, header)
            for i, (r, c) in enumerate(grid.tiles()):
                _tick(progress, cancel, i / len(grid), f"tile {i + 1}/{len(grid)}")
                record = tile_encoder.record(tile_encoder.analyse(r, c), rate, embed_map)
                skipped += record.skipped
                writer.write_tile(record)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _tick(progress, None, 1.0, "done")
    size = output.stat().st_size
    pixels = info.width * info.height
    framing = size - writer.header_bytes - writer.stream_bytes - writer.mask_bytes - writer.map_bytes
    return EncodeReport(
        output=str(output), width=info.width, height=info.height, file_bytes=size,
        header_bytes=writer.header_bytes, stream_bytes=writer.stream_bytes, mask_bytes=writer.mask_bytes,
        map_bytes=writer.map_bytes, framing_bytes=framing, bpp=8 * size / pixels,
        bpp_without_map=8 * (size - writer.map_bytes) / pixels, tiles=len(grid), skipped_tiles=skipped,
        preset=loaded.preset.name, rate=rate, device=str(loaded.device), seconds=time.perf_counter() - start,
    )


# -- decode ----------------------------------------------------------------------------------
def _info_from_header(header: Header) -> RasterInfo:
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

    def __init__(self, loaded: LoadedCodec, grid: TileGrid, info: RasterInfo, rate: int, seed: int, map_read) -> None:
        self.loaded, self.grid, self.info, self.rate, self.map_read = loaded, grid, info, rate, map_read
        self.planes = _coded_index(info)
        self.latents: dict[tuple[int, int], list[torch.Tensor] | None] = {}
        self.masks: dict[tuple[int, int], np.ndarray] = {}
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

    def output_valid(self, r: int, c: int) -> np.ndarray:
        """Validity over ``grid.output(r, c)``: this core's mask, True around it (the
        neighbours mark their own cores; the blender AND-s them)."""
        out, core = self.grid.output(r, c), self.grid.core(r, c)
        valid = np.ones((out.height, out.width), bool)
        mask = self.masks.get((r, c))
        if mask is not None:
            oy, ox = core.y0 - out.y0, core.x0 - out.x0
            valid[oy:oy + core.height, ox:ox + core.width] = mask
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
        out = self.grid.output(r, c)
        oy, ox = out.y0 - window.y0, out.x0 - window.x0
        values = []
        with torch.no_grad():
            for plane, bands in enumerate(self.planes):
                y_hat = self._neighbourhood(r, c, plane, window).to(device)
                z_tilde = codec.synthesise(y_hat.float(), map_input)
                noise = lambda step, plane=plane: self.noise.window(step * 16 + plane, window).to(device)  # noqa: E731
                image = codec.reconstruct(codec.generate(z_tilde, map_input, noise))
                values.append(_plane_values(image[:, :, oy:oy + out.height, ox:ox + out.width], len(bands)))
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


def read_info(path: str | Path) -> dict:
    """The header of a .magc file and its byte budget, as a JSON-ready dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    with open(path, "rb") as handle:
        reader = BitstreamReader(handle)
        header = reader.header
        info = _info_from_header(header)
        grid = TileGrid(header.width, header.height, header.tile, 0, header.blend)
        skipped = streams = maps = masks = 0
        for record in reader.tiles(len(grid), len(info.planes)):
            skipped += record.skipped
            streams += sum(len(s) for s, _ in record.streams)
            maps += len(record.map_bytes or b"")
            masks += len(record.mask or b"")
    size = path.stat().st_size
    data = {
        "file": str(path), "bytes": size, "width": header.width, "height": header.height,
        "bands": header.bands, "dtype": header.dtype, "geotransform": list(header.geotransform),
        "crs": f"EPSG:{header.epsg}" if header.epsg else (header.crs_wkt or None),
        "nodata": header.nodata, "alpha_band": header.alpha_band, "preset": header.preset,
        "rate": header.rate, "weights_hash": header.weights_hash.hex(), "tile": header.tile,
        "tiles": len(grid), "skipped_tiles": skipped, "map_fingerprint": header.map_fingerprint.hex(),
        "map_embedded": header.map_embedded, "seed": header.seed,
        "bpp": 8 * size / (header.width * header.height),
        "bytes_by_part": {"streams": streams, "nodata_masks": masks, "embedded_map": maps, "header_and_framing": size - streams - masks - maps},
    }
    return data


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
) -> DecodeReport:
    """Reconstruct a georeferenced GeoTIFF from a .magc file (and the same map layers)."""
    start = time.perf_counter()
    input, output = Path(input), Path(output)
    if not input.is_file():
        raise InputError(f"file not found: {input}")
    _check_output(output, [input])
    # The whole file is read and every record verified first: a truncated or corrupted file
    # is reported before any work, and compressed files are small (a 100 Mpx raster at
    # 0.1 bpp is 1.25 MB).
    reader = BitstreamReader(io.BytesIO(input.read_bytes()))
    header = reader.header
    info = _info_from_header(header)
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
        _tick(progress, cancel, 0.0, "checking the map")
        if map_source.fingerprint() != header.map_fingerprint and not ignore_map_mismatch:
            raise MapMismatchError(
                "the map layers differ from those the file was encoded with "
                f"({len(maps)} layer(s) given); give the same layers, or --ignore-map-mismatch to decode anyway"
            )
        map_read = map_source.read
    decoder = _TileDecoder(loaded, grid, info, header.rate, header.seed, map_read)
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
                _tick(progress, cancel, done / len(grid), f"tile {done + 1}/{len(grid)}")
                blender.add(r, c, decoder.decode(r, c), decoder.output_valid(r, c))
                done += 1
            decoder.forget_before(r)
            if embedded is not None:
                embedded.forget_before(r)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    _tick(progress, None, 1.0, "done")
    return DecodeReport(
        output=str(output), width=info.width, height=info.height, tiles=len(grid), preset=header.preset,
        rate=header.rate, device=str(loaded.device), seconds=time.perf_counter() - start,
        map_checked=not (ignore_map_mismatch or header.map_embedded),
    )


def roundtrip(
    input: str | Path,
    out_dir: str | Path,
    maps: list[str] | tuple[str, ...] = (),
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    **encode_options,
) -> dict:
    """Encode, decode and compare: writes DIR/NAME.magc, DIR/NAME.magc.tif and DIR/NAME.json."""
    from .metrics import compare_rasters

    input, out_dir = Path(input), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    coded, decoded, report_path = out_dir / f"{input.stem}.magc", out_dir / f"{input.stem}.magc.tif", out_dir / f"{input.stem}.json"
    half = (lambda f, m: progress(f / 2, m)) if progress else None
    encoded = encode_raster(input, coded, maps, progress=half, cancel=cancel, **encode_options)
    codec = encode_options.get("codec") or load_codec(
        encoded.preset, encode_options.get("weights"), encode_options.get("device", "auto"),
        allow_untrained=True, sd_weights=encode_options.get("sd_weights"),
    )
    second = (lambda f, m: progress(0.5 + f / 2, m)) if progress else None
    decoded_report = decode_raster(coded, decoded, maps, progress=second, cancel=cancel, codec=codec)
    quality = compare_rasters(input, decoded)
    report = {
        "input": str(input), "file": str(coded), "reconstruction": str(decoded),
        "bpp": encoded.bpp, "bpp_without_map": encoded.bpp_without_map, **quality,
        "encode": encoded.to_dict(), "decode": decoded_report.to_dict(),
    }
    tmp = _temporary(report_path)
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, report_path)
    return report
