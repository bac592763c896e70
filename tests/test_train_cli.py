"""`magc train` end to end on a real training image, a few steps, for both recipes (lite on
the CPU, the SD-size recipe through accelerate), then the exported weights encode and decode."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from magc.api import decode_raster, encode_raster
from magc.cli import main
from magc.models.loading import load_codec
from magc.train.data import prepare_image

from conftest import SHARED_DATA, need


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    source = need(SHARED_DATA / "dubai-aerial" / "tile2")
    folder = tmp_path_factory.mktemp("data")
    item = prepare_image(source / "images" / "image_part_001.jpg", source / "masks" / "image_part_001.png", folder, "t2p1", (220_000.0, 2_800_000.0))
    (folder / "index.json").write_text(json.dumps([{**item, "tile": 2, "split": "train"}]))
    return folder


@pytest.mark.parametrize("preset", ["tiny-lite", "tiny-sd21"])
def test_train_export_and_use(preset: str, data_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    weights = tmp_path / f"{preset}.safetensors"
    code = main(["train", "--preset", preset, "--data", str(data_dir), "--run", str(tmp_path / "run"), "--steps", "2,2",
                 "--device", "cpu", "--export", str(weights)])
    assert code == 0 and weights.is_file()
    manifest = json.loads(weights.with_name(f"{preset}.manifest.json").read_text())
    assert manifest["preset"] == preset and len(manifest["sha256"]) == 64
    loaded = load_codec(preset, weights=weights, device="cpu")  # trained: no --allow-untrained needed
    assert loaded.trained
    raster, layer = data_dir / "t2p1.tif", data_dir / "t2p1.gpkg"
    maps = [str(layer)] if loaded.preset.map.kind == "classes" else []
    encode_raster(raster, tmp_path / "x.magc", maps, codec=loaded)
    decode_raster(tmp_path / "x.magc", tmp_path / "x.tif", maps, codec=loaded)
    assert (tmp_path / "x.tif").is_file()
