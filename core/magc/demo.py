"""``magc demo`` / ``make demo``: the main job on the embedded default, end to end.

Takes a real validation image of the Dubai aerial data set (never seen in training), turns
it into a georeferenced GeoTIFF with its land-cover map as a GeoPackage (the GIS inputs a
user has), compresses it with the shipped ``lite`` weights, decodes it from the file and
the map alone, and prints bits per pixel, PSNR, MS-SSIM and where the outputs are.
"""
from __future__ import annotations

import json
from pathlib import Path

from .api import roundtrip
from .errors import InputError
from .train.data import prepare_image

DEMO_IMAGE = ("tile6", 5)


def run_demo(shared_data: Path, out_dir: Path, rate: int | None = None, device: str = "auto") -> dict:
    tile, part = DEMO_IMAGE
    source = shared_data / "dubai-aerial" / tile
    image, mask = source / "images" / f"image_part_00{part}.jpg", source / "masks" / f"image_part_00{part}.png"
    if not image.exists():
        raise InputError(f"demo image not found: {image} (the demo reads ../shared/data beside the project)")
    item = prepare_image(image, mask, out_dir / "input", f"{tile}_part{part}", (340_000.0, 2_800_000.0))
    raster, layer = out_dir / "input" / item["image"], out_dir / "input" / item["map"]
    report = roundtrip(raster, out_dir, [str(layer)], preset="lite", rate=rate, device=device)
    summary = {
        "input": str(raster), "map": str(layer), "compressed": report["file"], "reconstruction": report["reconstruction"],
        "report": str(out_dir / f"{raster.stem}.json"), "bpp": round(report["bpp"], 4), "psnr_db": round(report["psnr"], 2),
        "ms_ssim": round(report["ms_ssim"], 4), "bytes": report["encode"]["file_bytes"], "rate": report["encode"]["rate"],
        "device": report["encode"]["device"], "encode_seconds": round(report["encode"]["seconds"], 1),
        "decode_seconds": round(report["decode"]["seconds"], 1),
    }
    print(json.dumps(summary, indent=1))
    return summary
