"""Lossless coding of a tile's nodata mask, small enough to sit inside a 0.02 bpp tile.

Masks are mostly a few straight or slanted edges, so each row is stored as the positions where
it changes value, or as their shifts from the row above; the bytes are then deflated.
"""
from __future__ import annotations

import io
import zlib

import numpy as np

from .bitstream import read_varint, write_varint
from .errors import FormatError


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


def _transitions(row: np.ndarray) -> np.ndarray:
    """Positions where a row of booleans changes value, starting from False at -1."""
    return np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))


def pack_mask(valid: np.ndarray) -> bytes:
    """Lossless nodata mask as per-row transition positions, deflated.

    A row with as many transitions as the previous row stores their shifts (zig-zag varints,
    mostly 0 or ±1 along a straight edge), any other row its positions; a 1024 px tile cut by
    a slanted image border costs about 70 bytes.
    """
    out = io.BytesIO()
    previous: np.ndarray | None = None
    for row in valid.astype(bool):
        positions = _transitions(row)
        same = previous is not None and len(previous) == len(positions)
        write_varint(out, 2 * len(positions) + int(same))
        if same:
            for delta in positions - previous:
                write_varint(out, _zigzag(int(delta)))
        else:
            last = 0
            for position in positions:
                write_varint(out, int(position) - last)
                last = int(position)
        previous = positions
    return zlib.compress(out.getvalue(), 9)


def unpack_mask(blob: bytes, height: int, width: int) -> np.ndarray:
    try:
        data = io.BytesIO(zlib.decompress(blob))
    except zlib.error as exc:
        raise FormatError("corrupted nodata mask") from exc
    mask = np.zeros((height, width), bool)
    previous: list[int] | None = None
    for y in range(height):
        head = read_varint(data, "nodata mask")
        count, same = head // 2, head % 2
        if same:
            if previous is None or len(previous) != count:
                raise FormatError("corrupted nodata mask")
            positions = [p + _unzigzag(read_varint(data, "nodata mask")) for p in previous]
        else:
            positions, last = [], 0
            for _ in range(count):
                last += read_varint(data, "nodata mask")
                positions.append(last)
        if count % 2 or any(b <= a for a, b in zip(positions, positions[1:])) or (positions and (positions[0] < 0 or positions[-1] > width)):
            raise FormatError("corrupted nodata mask")
        for start, stop in zip(positions[::2], positions[1::2]):
            mask[y, start:stop] = True
        previous = positions
    if data.read(1):
        raise FormatError("corrupted nodata mask (trailing bytes)")
    return mask
