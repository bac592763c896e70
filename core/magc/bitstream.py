"""The .magc container: one compact header per raster, then one checked record per tile.

Layout (all integers are unsigned LEB128 varints unless a width is given)::

    "MAGC"  version:u8  header_length  header  header_crc32:u32le
    per tile, in raster order (rows, then columns):
        n = payload_length << 2 | flags        (n = 0: the tile is entirely nodata, skipped)
        payload
        crc32 of (n, payload):u32le

    header    = flags, width, height, bands, [alpha_band], [ranges: lo, hi per coded band],
                geotransform (4 float64 when north-up, else 6), [CRS: EPSG code | zlib(WKT)],
                [nodata: float64], preset (u8 length + ascii), weights_hash (8 bytes),
                rate:u8, tile/64, blend, map_fingerprint (8 bytes), seed:u32le
    payload   = [mask: length + zlib(per-row transitions, see mask_coding)]              flag 1
                [map: length + zlib(map window bytes)]                                   flag 2
                means: one u8 per coded band (mean over the core's valid pixels x 255)  version 2
                per plane: [length (all but the last)] rANS stream, symbol_check:u16le

Every byte counts in the reported bits per pixel. The CRCs make any truncation or bit flip a
clean ``FormatError`` before the entropy decoder ever sees the bytes.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator


from .errors import FormatError

MAGIC = b"MAGC"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no band means
MAX_VARINT_BYTES = 10

F_NORTH_UP = 1
F_CRS = 2
F_EPSG = 4
F_NODATA = 8
F_ALPHA = 16
F_UINT16 = 32
F_MAP_EMBEDDED = 64

T_MASK = 1
T_MAP = 2


def coded_band_count(bands: int, alpha_band: int | None) -> int:
    """Bands that are coded (the alpha band is the nodata mask, not coded)."""
    return bands - (1 if alpha_band is not None else 0)


def write_varint(out: BinaryIO, value: int) -> None:
    if value < 0:
        raise ValueError("varints are unsigned")
    while True:
        byte = value & 0x7F
        value >>= 7
        out.write(bytes([byte | (0x80 if value else 0)]))
        if not value:
            return


def read_varint(data: BinaryIO, what: str) -> int:
    result = shift = 0
    for _ in range(MAX_VARINT_BYTES):
        byte = data.read(1)
        if not byte:
            raise FormatError(f"file truncated while reading {what}")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
    raise FormatError(f"corrupted file: malformed number in {what}")


def _read_exact(data: BinaryIO, size: int, what: str) -> bytes:
    chunk = data.read(size)
    if len(chunk) != size:
        raise FormatError(f"file truncated while reading {what}")
    return chunk


@dataclass
class Header:
    width: int
    height: int
    bands: int
    dtype: str
    geotransform: tuple[float, ...]
    preset: str
    weights_hash: bytes
    rate: int
    tile: int
    blend: int
    map_fingerprint: bytes
    seed: int
    crs_wkt: str = ""
    epsg: int | None = None
    nodata: float | None = None
    alpha_band: int | None = None
    ranges: list[tuple[int, int]] = field(default_factory=list)
    map_embedded: bool = False

    @property
    def coded_bands(self) -> int:
        return coded_band_count(self.bands, self.alpha_band)

    def flags(self) -> int:
        g = self.geotransform
        flags = F_NORTH_UP if g[2] == 0.0 and g[4] == 0.0 else 0
        flags |= F_CRS if (self.crs_wkt or self.epsg) else 0
        flags |= F_EPSG if self.epsg else 0
        flags |= F_NODATA if self.nodata is not None else 0
        flags |= F_ALPHA if self.alpha_band is not None else 0
        flags |= F_UINT16 if self.dtype == "uint16" else 0
        flags |= F_MAP_EMBEDDED if self.map_embedded else 0
        return flags

    def encode(self) -> bytes:
        out = io.BytesIO()
        flags = self.flags()
        for value in (flags, self.width, self.height, self.bands):
            write_varint(out, value)
        if self.alpha_band is not None:
            write_varint(out, self.alpha_band)
        if flags & F_UINT16:
            for lo, hi in self.ranges:
                write_varint(out, lo)
                write_varint(out, hi)
        g = self.geotransform
        values = (g[0], g[1], g[3], g[5]) if flags & F_NORTH_UP else tuple(g)
        out.write(struct.pack(f"<{len(values)}d", *values))
        if flags & F_EPSG:
            write_varint(out, int(self.epsg))
        elif flags & F_CRS:
            wkt = zlib.compress(self.crs_wkt.encode(), 9)
            write_varint(out, len(wkt))
            out.write(wkt)
        if flags & F_NODATA:
            out.write(struct.pack("<d", self.nodata))
        name = self.preset.encode("ascii")
        out.write(bytes([len(name)]) + name)
        out.write(self.weights_hash)
        out.write(bytes([self.rate]))
        write_varint(out, self.tile // 64)
        write_varint(out, self.blend)
        out.write(self.map_fingerprint)
        out.write(struct.pack("<I", self.seed))
        return out.getvalue()

    @classmethod
    def decode(cls, raw: bytes) -> "Header":
        data = io.BytesIO(raw)
        flags, width, height, bands = (read_varint(data, "header") for _ in range(4))
        alpha = read_varint(data, "header") if flags & F_ALPHA else None
        dtype = "uint16" if flags & F_UINT16 else "uint8"
        if not (0 < width < 2**31 and 0 < height < 2**31 and 1 <= bands <= 4):
            raise FormatError("corrupted header: impossible raster size")
        coded = coded_band_count(bands, alpha)
        ranges = [(read_varint(data, "header"), read_varint(data, "header")) for _ in range(coded)] if flags & F_UINT16 else []
        count = 4 if flags & F_NORTH_UP else 6
        values = struct.unpack(f"<{count}d", _read_exact(data, 8 * count, "header"))
        geotransform = (values[0], values[1], 0.0, values[2], 0.0, values[3]) if flags & F_NORTH_UP else values
        epsg, crs_wkt = None, ""
        if flags & F_EPSG:
            epsg = read_varint(data, "header")
        elif flags & F_CRS:
            size = read_varint(data, "header")
            try:
                crs_wkt = zlib.decompress(_read_exact(data, size, "header")).decode()
            except (zlib.error, UnicodeDecodeError) as exc:
                raise FormatError("corrupted header: unreadable CRS") from exc
        nodata = struct.unpack("<d", _read_exact(data, 8, "header"))[0] if flags & F_NODATA else None
        name = _read_exact(data, _read_exact(data, 1, "header")[0], "header")
        weights_hash = _read_exact(data, 8, "header")
        rate = _read_exact(data, 1, "header")[0]
        tile = read_varint(data, "header") * 64
        blend = read_varint(data, "header")
        fingerprint = _read_exact(data, 8, "header")
        seed = struct.unpack("<I", _read_exact(data, 4, "header"))[0]
        if data.read(1):
            raise FormatError("corrupted header: unexpected trailing bytes")
        if tile == 0 or tile < 2 * blend:
            raise FormatError("corrupted header: impossible tile size")
        try:
            preset = name.decode("ascii")
        except UnicodeDecodeError as exc:
            raise FormatError("corrupted header: unreadable preset name") from exc
        return cls(
            width=width, height=height, bands=bands, dtype=dtype, geotransform=tuple(geotransform),
            preset=preset, weights_hash=weights_hash, rate=rate, tile=tile, blend=blend,
            map_fingerprint=fingerprint, seed=seed, crs_wkt=crs_wkt, epsg=epsg, nodata=nodata,
            alpha_band=alpha, ranges=ranges, map_embedded=bool(flags & F_MAP_EMBEDDED),
        )


@dataclass
class TileRecord:
    """One tile: optional nodata mask and map, and one (stream, symbol check) per plane."""

    streams: list[tuple[bytes, int]] = field(default_factory=list)
    mask: bytes | None = None
    map_bytes: bytes | None = None
    means: bytes | None = None  # one byte per coded band; None in version 1 files

    @property
    def skipped(self) -> bool:
        return not self.streams

    def encode(self) -> tuple[int, bytes]:
        out = io.BytesIO()
        flags = 0
        if self.mask is not None:
            flags |= T_MASK
            write_varint(out, len(self.mask))
            out.write(self.mask)
        if self.map_bytes is not None:
            flags |= T_MAP
            write_varint(out, len(self.map_bytes))
            out.write(self.map_bytes)
        if self.means is not None:
            out.write(self.means)
        for i, (stream, check) in enumerate(self.streams):
            if i < len(self.streams) - 1:
                write_varint(out, len(stream))
            out.write(stream)
            out.write(struct.pack("<H", check))
        return flags, out.getvalue()

    @classmethod
    def decode(cls, flags: int, payload: bytes, planes: int, bands: int = 0) -> "TileRecord":
        """``bands``: how many band means precede the streams (0 in version 1 files)."""
        data = io.BytesIO(payload)
        record = cls()
        if flags & T_MASK:
            record.mask = _read_exact(data, read_varint(data, "tile"), "tile")
        if flags & T_MAP:
            record.map_bytes = _read_exact(data, read_varint(data, "tile"), "tile")
        if bands:
            record.means = _read_exact(data, bands, "tile")
        for i in range(planes):
            if i < planes - 1:
                stream = _read_exact(data, read_varint(data, "tile"), "tile")
            else:
                rest = data.read()
                if len(rest) < 2:
                    raise FormatError("corrupted tile: missing stream")
                data = io.BytesIO(rest[-2:])
                stream = rest[:-2]
            check = struct.unpack("<H", _read_exact(data, 2, "tile"))[0]
            record.streams.append((stream, check))
        return record


class BitstreamWriter:
    """Writes header then tile records to an open binary file; counts bytes per part
    (framing is what remains of the file size)."""

    def __init__(self, out: BinaryIO, header: Header) -> None:
        self.out = out
        self.coded_bands = header.coded_bands
        raw = header.encode()
        prefix = io.BytesIO()
        prefix.write(MAGIC + bytes([VERSION]))
        write_varint(prefix, len(raw))
        prefix.write(raw)
        blob = prefix.getvalue()
        out.write(blob + struct.pack("<I", zlib.crc32(blob)))
        self.header_bytes = len(blob) + 4
        self.map_bytes = 0
        self.mask_bytes = 0
        self.stream_bytes = 0
        self.colour_bytes = 0

    def write_tile(self, record: TileRecord) -> None:
        if record.skipped:
            self.out.write(b"\x00")
            return
        if record.means is None or len(record.means) != self.coded_bands:
            raise ValueError(f"a version {VERSION} tile record needs {self.coded_bands} band means")
        flags, payload = record.encode()
        head = io.BytesIO()
        write_varint(head, len(payload) << 2 | flags)
        self.out.write(head.getvalue() + payload + struct.pack("<I", zlib.crc32(head.getvalue() + payload)))
        self.map_bytes += len(record.map_bytes or b"")
        self.mask_bytes += len(record.mask or b"")
        self.stream_bytes += sum(len(s) for s, _ in record.streams)
        self.colour_bytes += len(record.means)


class BitstreamReader:
    """Reads and verifies the header, then yields verified tile records in order."""

    def __init__(self, data: BinaryIO) -> None:
        self.data = data
        magic = data.read(4)
        if len(magic) < 4 or magic != MAGIC:
            raise FormatError("not a MAGC file (wrong magic bytes)")
        version = _read_exact(data, 1, "version")[0]
        if version not in READABLE_VERSIONS:
            readable = ", ".join(str(v) for v in READABLE_VERSIONS)
            raise FormatError(f"unsupported MAGC file version {version} (this reader reads versions {readable})")
        self.version = version
        length_bytes = io.BytesIO()
        size = read_varint(data, "header length")
        write_varint(length_bytes, size)
        if size > 1 << 20:
            raise FormatError("corrupted header: implausible header length")
        raw = _read_exact(data, size, "header")
        crc = struct.unpack("<I", _read_exact(data, 4, "header checksum"))[0]
        if zlib.crc32(MAGIC + bytes([version]) + length_bytes.getvalue() + raw) != crc:
            raise FormatError("corrupted header (checksum mismatch)")
        self.header = Header.decode(raw)

    def tiles(self, count: int, planes: int) -> Iterator[TileRecord]:
        bands = self.header.coded_bands if self.version >= 2 else 0
        for index in range(count):
            n = read_varint(self.data, f"tile {index}")
            if n == 0:
                yield TileRecord()
                continue
            size, flags = n >> 2, n & 3
            payload = _read_exact(self.data, size, f"tile {index}")
            crc = struct.unpack("<I", _read_exact(self.data, 4, f"tile {index}"))[0]
            head = io.BytesIO()
            write_varint(head, n)
            if zlib.crc32(head.getvalue() + payload) != crc:
                raise FormatError(f"tile {index} is corrupted (checksum mismatch)")
            yield TileRecord.decode(flags, payload, planes, bands)
        if self.data.read(1):
            raise FormatError("corrupted file: unexpected data after the last tile")
