"""The public calls: encode_raster, decode_raster, roundtrip, read_info, load_codec.

::

    encode: raster windows ──> tiles ──> codec.analyse ──> codec.compress ──> bitstream
    decode: bitstream ──> codec.decompress ──> ŷ neighbourhoods ──> codec.synthesise
            ──> codec.generate ──> codec.reconstruct ──> Blender ──> GeoTIFF windows

The two pipelines live in ``encoding`` and ``decoding`` and mirror each other. Outputs are
written under a temporary name in the destination folder and renamed only when complete;
a failure or a cancel removes them. Inputs are only read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .bitstream import BitstreamReader
from .decoding import DecodeReport, decode_raster, info_from_header
from .encoding import EncodeReport, encode_raster
from .errors import InputError
from .models.loading import load_codec
from .pipeline import CancelCheck, Progress, temporary
from .tiling import TileGrid

__all__ = ["encode_raster", "decode_raster", "roundtrip", "read_info", "load_codec", "EncodeReport", "DecodeReport"]


def read_info(path: str | Path) -> dict:
    """The header of a .magc file and its byte budget, as a JSON-ready dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    with open(path, "rb") as handle:
        reader = BitstreamReader(handle)
        header = reader.header
        info = info_from_header(header)
        grid = TileGrid(header.width, header.height, header.tile, 0, header.blend)
        skipped = streams = maps = masks = colour = 0
        for record in reader.tiles(len(grid), len(info.planes)):
            skipped += record.skipped
            streams += sum(len(s) for s, _ in record.streams)
            maps += len(record.map_bytes or b"")
            masks += len(record.mask or b"")
            colour += len(record.means or b"")
    size = path.stat().st_size
    data = {
        "file": str(path), "format_version": reader.version, "bytes": size, "width": header.width, "height": header.height,
        "bands": header.bands, "dtype": header.dtype, "geotransform": list(header.geotransform),
        "crs": f"EPSG:{header.epsg}" if header.epsg else (header.crs_wkt or None),
        "nodata": header.nodata, "alpha_band": header.alpha_band, "preset": header.preset,
        "rate": header.rate, "weights_hash": header.weights_hash.hex(), "tile": header.tile,
        "tiles": len(grid), "skipped_tiles": skipped, "map_fingerprint": header.map_fingerprint.hex(),
        "map_embedded": header.map_embedded, "seed": header.seed,
        "bpp": 8 * size / (header.width * header.height),
        "bytes_by_part": {
            "streams": streams, "band_means": colour, "nodata_masks": masks, "embedded_map": maps,
            "header_and_framing": size - streams - colour - masks - maps,
        },
    }
    return data


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
    tmp = temporary(report_path)
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, report_path)
    return report
