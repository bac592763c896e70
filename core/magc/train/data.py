"""The Dubai aerial data set as GIS data, and random training crops from it.

``prepare_dubai`` turns each JPEG into a GeoTIFF with a synthetic geotransform (UTM 40N,
1 m pixels, every image at its own place) and each colour mask into (a) a GeoPackage of
polygons with a ``class`` attribute in this project's schema and (b) a label GeoTIFF for
mIoU (Dubai classes folded into the schema, unlabelled and black pixels = 255, ignored).
Training and evaluation then read the map through ``magc.maps`` exactly as users do.

The colours in the data set's own ``classes.json`` are wrong; these are the ones the masks
use (``../shared/data/README.md``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from osgeo import gdal, ogr, osr
from PIL import Image

from ..map_layers import CLASS_SCHEMA, MapLayerSpec
from ..maps import Grid, VectorMap
from ..raster import RasterReader

gdal.UseExceptions()

DUBAI_COLOURS: dict[tuple[int, int, int], int] = {
    (60, 16, 152): 1,     # building
    (132, 41, 246): 0,    # land (unpaved) -> background
    (110, 193, 228): 2,   # road
    (254, 221, 58): 4,    # vegetation
    (226, 169, 41): 3,    # water
    (155, 155, 155): 255, # unlabeled -> ignored in labels, background in maps
}
IGNORE = 255
UTM40N = 32640
TRAIN_TILES = (1, 2, 3, 4, 5)
VAL_TILES = (6, 7)


def mask_labels(mask_path: Path) -> np.ndarray:
    """Schema labels (H, W) from a colour mask; unknown colours (black) -> 255."""
    rgb = np.asarray(Image.open(mask_path).convert("RGB"), dtype=np.int32)
    key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    labels = np.full(key.shape, IGNORE, np.uint8)
    for (r, g, b), label in DUBAI_COLOURS.items():
        labels[key == ((r << 16) | (g << 8) | b)] = label
    return labels


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, pixel accuracy) over the labelled pixels (IGNORE left out). A batch with
    none gives no verdict, (0, 0), instead of the NaN that cross-entropy returns."""
    target = labels.long()
    keep = target != IGNORE
    if not keep.any():
        return logits.sum() * 0.0, torch.tensor(0.0)
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE)
    accuracy = (logits.argmax(1) == target)[keep].float().mean()
    return loss, accuracy


def _geotiff(path: Path, array: np.ndarray, origin: tuple[float, float], nodata: int | None = None) -> None:
    bands = 1 if array.ndim == 2 else array.shape[0]
    h, w = array.shape[-2:]
    tmp = path.with_suffix(".tmp.tif")
    options = ["TILED=YES", "COMPRESS=DEFLATE"] + (["PHOTOMETRIC=RGB"] if bands == 3 else [])
    ds = gdal.GetDriverByName("GTiff").Create(str(tmp), w, h, bands, gdal.GDT_Byte, options)
    ds.SetGeoTransform((origin[0], 1.0, 0.0, origin[1], 0.0, -1.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(UTM40N)
    ds.SetProjection(srs.ExportToWkt())
    for b in range(bands):
        band = ds.GetRasterBand(b + 1)
        band.WriteArray(array if bands == 1 else array[b])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds = None
    os.replace(tmp, path)


def _polygonize(labels_tif: Path, out_gpkg: Path) -> None:
    """Polygons of the map classes (background and ignored pixels are not features)."""
    source = gdal.Open(str(labels_tif))
    band = source.GetRasterBand(1)
    tmp = out_gpkg.with_suffix(".tmp.gpkg")
    if tmp.exists():
        tmp.unlink()
    target = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp))
    layer = target.CreateLayer("landcover", srs=source.GetSpatialRef(), geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("label", ogr.OFTInteger))
    mem = gdal.GetDriverByName("MEM").Create("", source.RasterXSize, source.RasterYSize, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(source.GetGeoTransform())
    labels = band.ReadAsArray()
    mem.GetRasterBand(1).WriteArray(((labels > 0) & (labels < IGNORE)).astype(np.uint8))
    gdal.Polygonize(band, mem.GetRasterBand(1), layer, 0, [])
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    layer.ResetReading()
    target.StartTransaction()
    for feature in layer:
        feature.SetField("class", CLASS_SCHEMA[feature.GetField("label")])
        layer.SetFeature(feature)
    target.CommitTransaction()
    target = None
    os.replace(tmp, out_gpkg)


def prepare_image(image_path: Path, mask_path: Path, out: Path, name: str, origin: tuple[float, float]) -> dict:
    """One image: ``NAME.tif`` (RGB), ``NAME.gpkg`` (land-cover polygons), ``NAME.labels.tif``."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / f"{name}.tif").exists():
        image = np.asarray(Image.open(image_path).convert("RGB")).transpose(2, 0, 1)
        _geotiff(out / f"{name}.tif", np.ascontiguousarray(image), origin)
    if not (out / f"{name}.labels.tif").exists():
        _geotiff(out / f"{name}.labels.tif", mask_labels(mask_path), origin, nodata=IGNORE)
    if not (out / f"{name}.gpkg").exists():
        _polygonize(out / f"{name}.labels.tif", out / f"{name}.gpkg")
    return {"name": name, "image": f"{name}.tif", "map": f"{name}.gpkg", "labels": f"{name}.labels.tif"}


def prepare_dubai(source: Path, out: Path) -> list[dict]:
    """GeoTIFF + GeoPackage + label raster for every image; returns the index (also written).

    Each image gets its own place in UTM 40N (1 m pixels) so that no two overlap."""
    index = []
    for tile in range(1, 8):
        for part in range(1, 10):
            image_path = source / f"tile{tile}" / "images" / f"image_part_00{part}.jpg"
            if not image_path.exists():
                continue
            mask_path = source / f"tile{tile}" / "masks" / f"image_part_00{part}.png"
            origin = (200_000.0 + 20_000.0 * tile + 2_500.0 * part, 2_800_000.0)
            item = prepare_image(image_path, mask_path, out, f"tile{tile}_part{part}", origin)
            item.update(tile=tile, split="train" if tile in TRAIN_TILES else "val")
            index.append(item)
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return index


def load_index(data_dir: Path, split: str) -> list[dict]:
    path = data_dir / "index.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `magc prepare-data` first")
    return [item for item in json.loads(path.read_text()) if item["split"] == split]


@dataclass
class Scene:
    name: str
    image: np.ndarray   # (3, H, W) uint8
    classes: np.ndarray  # (H, W) uint8: the map rasterised from the vector layer
    labels: np.ndarray   # (H, W) uint8: ground truth for segmentation (255 = ignore)


def load_scene(data_dir: Path, item: dict) -> Scene:
    reader = RasterReader(data_dir / item["image"])
    info = reader.info
    image = reader.dataset.ReadAsArray()
    grid = Grid(info.width, info.height, info.geotransform, info.crs_wkt)
    classes = VectorMap([MapLayerSpec(str(data_dir / item["map"]))], grid).read(0, 0, info.width, info.height)
    labels = gdal.Open(str(data_dir / item["labels"])).ReadAsArray()
    return Scene(item["name"], image, classes, labels)


class CropSampler:
    """Random square crops with the 8 dihedral transforms, the same for image, map and labels."""

    def __init__(self, scenes: list[Scene], size: int, seed: int = 0) -> None:
        self.scenes = [s for s in scenes if min(s.image.shape[1:]) >= size]
        weights = np.array([s.image.shape[1] * s.image.shape[2] for s in self.scenes], np.float64)
        self.weights = weights / weights.sum()
        self.size = size
        self.rng = np.random.default_rng(seed)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, maps, labels = [], [], []
        for _ in range(batch_size):
            scene = self.scenes[self.rng.choice(len(self.scenes), p=self.weights)]
            h, w = scene.image.shape[1:]
            y, x = self.rng.integers(0, h - self.size + 1), self.rng.integers(0, w - self.size + 1)
            crop = (slice(y, y + self.size), slice(x, x + self.size))
            img, cls, lab = scene.image[(slice(None),) + crop], scene.classes[crop], scene.labels[crop]
            k = int(self.rng.integers(4))
            flip = bool(self.rng.integers(2))
            img, cls, lab = (np.rot90(a, k, axes=(-2, -1)) for a in (img, cls, lab))
            if flip:
                img, cls, lab = (a[..., ::-1] for a in (img, cls, lab))
            images.append(np.ascontiguousarray(img))
            maps.append(np.ascontiguousarray(cls))
            labels.append(np.ascontiguousarray(lab))
        x = torch.from_numpy(np.stack(images)).float() / 127.5 - 1
        return x, torch.from_numpy(np.stack(maps)), torch.from_numpy(np.stack(labels))
