"""`magc eval` on a real validation scene with the shipped weights, and the LPIPS / DISTS / FID
path that runs only where their pretrained backbones are cached on the machine."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import ogr

from magc.cli import main
from magc.evaluation import _patches
from magc.map_layers import CLASS_SCHEMA
from magc.perceptual import BACKBONES, PerceptualMetrics, checkpoint_path
from magc.train.data import prepare_image

from conftest import SHARED_DATA, need


def _empty_copy(layer: Path, out: Path) -> Path:
    """The same layer schema without features: a scene labelled all background."""
    source = ogr.Open(str(layer))
    src = source.GetLayer(0)
    target = ogr.GetDriverByName("GPKG").CreateDataSource(str(out))
    dst = target.CreateLayer(src.GetName(), srs=src.GetSpatialRef(), geom_type=src.GetGeomType())
    dst.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    target = source = None
    return out


@pytest.fixture(scope="module")
def val_data(tmp_path_factory) -> Path:
    source = need(SHARED_DATA / "dubai-aerial" / "tile6")
    folder = tmp_path_factory.mktemp("val")
    item = prepare_image(source / "images" / "image_part_005.jpg", source / "masks" / "image_part_005.png", folder, "t6p5", (600_000.0, 2_800_000.0))
    blank = {**item, "name": "t6p5_blank", "map": _empty_copy(folder / item["map"], folder / "t6p5_blank.gpkg").name}
    (folder / "index.json").write_text(json.dumps([{**item, "tile": 6, "split": "val"}, {**blank, "tile": 6, "split": "val"},
                                                   {**item, "name": "t1", "tile": 1, "split": "train"}]))
    return folder


def test_eval_table_plot_and_baselines(val_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # no LPIPS/DISTS/FID backbones here
    out = tmp_path / "eval"
    code = main(["eval", "--data", str(val_data), "--split", "val", "-o", str(out), "--rates", "0",
                 "--baselines", "jp2,webp", "--device", "cpu", "-q"])
    assert code == 0
    table = json.loads((out / "table.json").read_text())
    rows = {(r["method"], r["rate"]): r for r in table["rows"]}
    assert set(rows) == {("lite", "0"), ("jpeg2000", "0"), ("webp", "lowest")}
    assert table["summary"]["images"] == 2  # the val split only, the feature-less map included
    lite, jp2 = rows["lite", "0"], rows["jpeg2000", "0"]
    assert 0.005 < lite["bpp"] < 0.06
    assert lite["bpp"] <= jp2["bpp"] <= 1.15 * lite["bpp"]  # matched rate: JPEG 2000 gets at least as many bits
    assert lite["psnr"] > 15 and 0.5 < lite["ms_ssim"] < 1
    assert table["summary"]["segmentation_miou_on_originals"] > 0.3
    on_originals = table["summary"]["segmentation_iou_per_class_on_originals"]
    assert set(on_originals) == {f"iou_{name}" for name in CLASS_SCHEMA.values()}
    assert on_originals["iou_background"] > 0.3
    for row in rows.values():
        assert 0 <= row["miou"] <= 1 and row["fd_effnet"] > 0
        present = [row[f"iou_{name}"] for name in CLASS_SCHEMA.values() if row[f"iou_{name}"] != "unavailable"]
        assert present and row["miou"] == pytest.approx(np.mean(present))
        for metric, (_, checkpoint) in BACKBONES.items():
            assert row[metric].startswith("unavailable") and checkpoint in row[metric]
    with open(out / "table.csv") as handle:
        assert [(r["method"], r["rate"]) for r in csv.DictReader(handle)] == [(r["method"], r["rate"]) for r in table["rows"]]
    assert (out / "rate_quality.png").stat().st_size > 10_000
    assert not [p for p in out.iterdir() if p.is_dir()]  # the temporary files are gone


def _cache_random_backbones(torch_home: Path) -> None:
    """Backbones of the right layout with random weights: the code path of a machine that has them."""
    import torchvision

    models = {
        "lpips": torchvision.models.alexnet(),
        "dists": torchvision.models.vgg16(),
        "fid": torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False),
    }
    for metric, model in models.items():
        checkpoint_path(metric).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), checkpoint_path(metric))
    assert str(checkpoint_path("fid")).startswith(str(torch_home))


def test_perceptual_metrics_with_cached_backbones(tmp_path: Path, monkeypatch) -> None:
    raster = need(SHARED_DATA / "dubai-aerial" / "tile6" / "images" / "image_part_005.jpg")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _cache_random_backbones(tmp_path)
    torch.manual_seed(0)
    metrics = PerceptualMetrics()
    assert metrics.reasons == {} and set(metrics.paired) == {"lpips", "dists"} and metrics.inception is not None

    original = _patches(Path(raster))[:6]
    noisy = np.clip(original + np.random.default_rng(0).normal(0, 0.2, original.shape), 0, 1).astype(np.float32)
    same = metrics.paired_sums(original, original)
    different = metrics.paired_sums(original, noisy)
    assert same["lpips"] < 1e-6 and abs(same["dists"]) < 1e-4
    assert different["lpips"] > 1e-3 and different["dists"] > 1e-3
    reference = metrics.inception_features(original)
    assert reference.shape == (6, 2048)
    cells = metrics.values(different, len(original), reference, metrics.inception_features(noisy))
    identical = metrics.values(same, len(original), reference, reference)
    assert all(isinstance(v, float) for v in cells.values())
    assert cells["fid"] > 0 and abs(identical["fid"]) < 0.01 * cells["fid"]
    assert cells["lpips"] == pytest.approx(different["lpips"] / 6)
