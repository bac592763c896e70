"""The container: header round trips, masks, and a reader that never crashes on bad bytes."""
from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magc.api import decode_raster, encode_raster, read_info
from magc.bitstream import MAGIC, BitstreamReader, Header, TileRecord, read_varint, write_varint
from magc.mask_coding import pack_mask, unpack_mask
from magc.errors import FormatError

from conftest import smooth_image, write_geotiff


def make_header(**changes) -> Header:
    values = dict(
        width=2048, height=2048, bands=3, dtype="uint8", geotransform=(500000.0, 0.5, 0.0, 2800000.0, 0.0, -0.5),
        preset="lite", weights_hash=bytes(range(8)), rate=1, tile=1024, blend=16, map_fingerprint=bytes(range(8, 16)),
        seed=7, epsg=32640,
    )
    values.update(changes)
    return Header(**values)


@given(st.integers(min_value=0, max_value=2**63))
def test_varint_round_trip(value: int) -> None:
    out = io.BytesIO()
    write_varint(out, value)
    assert read_varint(io.BytesIO(out.getvalue()), "test") == value


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"geotransform": (1.0, 0.1, 0.01, 2.0, 0.02, -0.1), "epsg": None, "crs_wkt": 'LOCAL_CS["x"]'},
        {"dtype": "uint16", "bands": 4, "alpha_band": 3, "ranges": [(3, 900), (0, 65535), (12, 13)], "nodata": -9999.5},
        {"epsg": None, "crs_wkt": "", "map_embedded": True, "bands": 1},
    ],
)
def test_header_round_trip(changes: dict) -> None:
    header = make_header(**changes)
    assert Header.decode(header.encode()) == header


def test_header_is_compact() -> None:
    """One header per raster: tens of bytes, not kilobytes."""
    assert len(make_header().encode()) < 80


@given(st.integers(1, 70), st.integers(1, 70), st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_mask_round_trip(height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((height, width)) < rng.random()
    assert np.array_equal(unpack_mask(pack_mask(mask), height, width), mask)


def test_smooth_mask_is_cheap() -> None:
    """A rotated-rectangle nodata border costs under 100 bytes for a 1024 px tile."""
    yy, xx = np.mgrid[0:1024, 0:1024]
    mask = (xx + 0.3 * yy > 200) & (xx - 0.3 * yy < 900)
    assert len(pack_mask(mask)) < 100


def test_tile_record_round_trip() -> None:
    record = TileRecord(streams=[(b"abc", 513), (b"", 7), (b"xyz" * 40, 65535)], mask=b"m" * 5, map_bytes=b"\x00" * 3,
                        means=bytes([0, 128, 255, 7, 9]))
    flags, payload = record.encode()
    assert TileRecord.decode(flags, payload, 3, bands=5) == record
    version_1 = TileRecord(streams=record.streams, mask=record.mask, map_bytes=record.map_bytes)
    assert TileRecord.decode(*version_1.encode(), 3) == version_1


def _as_version_1(data: bytes, tiles: int, planes: int) -> bytes:
    """The same file as written before band means existed (version 1): records without them."""
    reader = BitstreamReader(io.BytesIO(data))
    raw = reader.header.encode()
    head = io.BytesIO()
    head.write(MAGIC + bytes([1]))
    write_varint(head, len(raw))
    head.write(raw)
    out = io.BytesIO()
    out.write(head.getvalue() + struct.pack("<I", zlib.crc32(head.getvalue())))
    for record in reader.tiles(tiles, planes):
        if record.skipped:
            out.write(b"\x00")
            continue
        record.means = None
        flags, payload = record.encode()
        n = io.BytesIO()
        write_varint(n, len(payload) << 2 | flags)
        out.write(n.getvalue() + payload + struct.pack("<I", zlib.crc32(n.getvalue() + payload)))
    return out.getvalue()


def test_version_1_files_still_decode(valid_file, tmp_path, tiny_lite) -> None:
    """Files written before the band means (version 1) decode as they did: without the shift."""
    coded, _, data = valid_file
    old = tmp_path / "old.magc"
    old.write_bytes(_as_version_1(data, 6, 1))
    info, new_info = read_info(old), read_info(coded)
    assert (info["format_version"], new_info["format_version"]) == (1, 2)
    assert info["bytes_by_part"]["band_means"] == 0 and new_info["bytes_by_part"]["band_means"] == 5 * 3
    assert new_info["bytes"] - info["bytes"] == 5 * 3  # 5 coded tiles x 3 bands, nothing else moved
    decode_raster(old, tmp_path / "old.tif", codec=tiny_lite)
    decode_raster(coded, tmp_path / "new.tif", codec=tiny_lite)
    from osgeo import gdal
    a, b = (gdal.Open(str(tmp_path / n)).ReadAsArray().astype(int) for n in ("old.tif", "new.tif"))
    assert a.shape == b.shape and not np.array_equal(a, b)


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory, tiny_lite):
    """A real .magc file (3x2 tiles, one entirely nodata) and the raster it came from."""
    folder = tmp_path_factory.mktemp("fuzz")
    image = smooth_image(320, 200)
    image[:, 128:256, :128] = 0  # tile (1, 0) is all nodata
    raster = write_geotiff(folder / "in.tif", image, nodata=0)
    coded = folder / "in.magc"
    encode_raster(raster, coded, codec=tiny_lite, rate=1)
    return coded, raster, coded.read_bytes()


def test_reader_accepts_valid_file(valid_file) -> None:
    info = read_info(valid_file[0])
    assert info["tiles"] == 6 and info["skipped_tiles"] == 1
    assert info["bytes"] == len(valid_file[2])


def _read_all(path) -> None:
    read_info(path)


def test_every_truncation_is_a_format_error(valid_file, tmp_path) -> None:
    data = valid_file[2]
    target = tmp_path / "cut.magc"
    for size in range(len(data)):
        target.write_bytes(data[:size])
        with pytest.raises(FormatError):
            _read_all(target)


def test_truncated_files_do_not_decode(valid_file, tmp_path, tiny_lite) -> None:
    data = valid_file[2]
    for size in list(range(0, 40)) + random.Random(1).sample(range(40, len(data)), 12):
        target = tmp_path / f"cut{size}.magc"
        target.write_bytes(data[:size])
        out = tmp_path / f"cut{size}.tif"
        with pytest.raises(FormatError):
            decode_raster(target, out, codec=tiny_lite)
        assert not out.exists()
        assert not list(tmp_path.glob(".*partial"))


def test_random_bit_flips_are_detected(valid_file, tmp_path, tiny_lite) -> None:
    data = valid_file[2]
    rng = random.Random(1234)
    target = tmp_path / "flip.magc"
    for trial in range(400):
        flipped = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 8])):
            position = rng.randrange(len(flipped))
            flipped[position] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(flipped))
        with pytest.raises(FormatError):
            _read_all(target)
        if trial % 40 == 0:  # the decoder uses the same checked reader; spot-check it end to end
            with pytest.raises(FormatError):
                decode_raster(target, tmp_path / "flip.tif", codec=tiny_lite)


def test_appended_bytes_are_rejected(valid_file, tmp_path) -> None:
    target = tmp_path / "long.magc"
    target.write_bytes(valid_file[2] + b"\x00")
    with pytest.raises(FormatError, match="after the last tile"):
        _read_all(target)


def test_wrong_magic_and_version(valid_file, tmp_path) -> None:
    data = valid_file[2]
    target = tmp_path / "bad.magc"
    target.write_bytes(b"GIF8" + data[4:])
    with pytest.raises(FormatError, match="not a MAGC file"):
        BitstreamReader(io.BytesIO(target.read_bytes()))
    target.write_bytes(data[:4] + bytes([9]) + data[5:])
    with pytest.raises(FormatError, match="version 9 .*versions 1, 2"):
        BitstreamReader(io.BytesIO(target.read_bytes()))
