"""``magc eval``: a codec and the GDAL baselines over prepared rasters, side by side.

For every image of the split and every rate of the preset: encode and decode through the
public API (the same path as users: GeoTIFF + vector map -> .magc -> GeoTIFF), then JPEG 2000
at the bpp the codec reached on that image (at least as many bytes), and WebP and JPEG at
their lowest settings. Measured in one run on one machine:

* bpp: every byte of every file, over all pixels of the split;
* PSNR (from the pooled MSE) and MS-SSIM (area-weighted mean), both on RGB in [0, 1];
* FD-EffNet: Fréchet distance between EfficientNet-Lite0 features of 128 px patches of the
  originals and of the reconstructions (FID-style; comparable within this table only);
* mIoU of the project's segmentation model applied to the reconstruction, against the
  ground-truth labels (and the same model on the originals as the reference), and the IoU of
  each class (``iou_<class>``), which shows where mIoU is lost;
* LPIPS, DISTS, FID (``perceptual``): computed on the same patches only where their pretrained
  backbones are already on the machine, otherwise "unavailable: <why>".
"""
from __future__ import annotations

import csv
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from osgeo import gdal
from tqdm import tqdm

from .api import decode_raster, encode_raster
from .baselines import encode_baseline
from .map_layers import MapLayerSpec, feature_count
from .map_layers import CLASS_SCHEMA
from .metrics import compare_rasters, confusion_matrix, iou_per_class, miou_from_confusion, psnr
from .models.loading import load_codec
from .perception import FeatureEmbedder, frechet_distance
from .perceptual import PerceptualMetrics
from .raster import RasterReader
from .segmentation import NUM_CLASSES, load_segmenter, segment_raster
from .train.data import load_index

PATCH = 128


@dataclass
class Accumulator:
    """Pooled statistics of one method at one operating point over all images."""

    method: str
    rate: str
    bytes: int = 0
    pixels: int = 0
    sq_err: float = 0.0
    values: int = 0
    msssim_area: float = 0.0
    msssim_sum: float = 0.0
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    features: list = field(default_factory=list)
    inception: list = field(default_factory=list)
    perceptual_sums: dict = field(default_factory=dict)
    patches: int = 0
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    unreached: int = 0

    def add(self, nbytes: int, quality: dict, pixels: int, bands: int) -> None:
        self.bytes += nbytes
        self.pixels += pixels
        self.sq_err += quality["mse"] * pixels * bands
        self.values += pixels * bands
        self.msssim_sum += quality["ms_ssim"] * pixels
        self.msssim_area += pixels

    def add_patches(self, patches: np.ndarray, scorers: "Scorers", original: np.ndarray | None = None) -> None:
        self.features.append(scorers.embedder(patches))
        inception = scorers.perceptual.inception_features(patches)
        if inception is not None:
            self.inception.append(inception)
        if original is not None:
            for metric, total in scorers.perceptual.paired_sums(original, patches).items():
                self.perceptual_sums[metric] = self.perceptual_sums.get(metric, 0.0) + total
        self.patches += len(patches)

    def class_ious(self) -> dict:
        ious = iou_per_class(self.confusion) if self.confusion.sum() else [None] * len(CLASS_SCHEMA)
        return {f"iou_{name}": "unavailable" if iou is None else iou for name, iou in zip(CLASS_SCHEMA.values(), ious)}

    def row(self, reference_features: np.ndarray | None, reference_inception: np.ndarray | None,
            perceptual: PerceptualMetrics) -> dict:
        features = _stack(self.features)
        fd = frechet_distance(reference_features, features) if reference_features is not None and features is not None else None
        extra = perceptual.values(self.perceptual_sums, self.patches, reference_inception, _stack(self.inception))
        return {
            "method": self.method, "rate": self.rate, "bpp": 8 * self.bytes / self.pixels if self.pixels else None,
            "psnr": psnr(self.sq_err / self.values) if self.values else None,
            "ms_ssim": self.msssim_sum / self.msssim_area if self.msssim_area else None,
            "miou": miou_from_confusion(self.confusion) if self.confusion.sum() else "unavailable",
            **self.class_ious(),
            "fd_effnet": fd if fd is not None else "unavailable",
            "encode_seconds": self.encode_seconds, "decode_seconds": self.decode_seconds,
            "images_above_target_bpp": self.unreached, **extra,
        }


def _patches(path: Path, valid_fraction: float = 1.0) -> np.ndarray:
    reader = RasterReader(path)
    planes, _ = reader.read(0, 0, reader.info.width, reader.info.height)
    rgb = planes[:3] if planes.shape[0] >= 3 else np.repeat(planes[:1], 3, 0)
    h, w = (rgb.shape[1] // PATCH) * PATCH, (rgb.shape[2] // PATCH) * PATCH
    grid = rgb[:, :h, :w].reshape(3, h // PATCH, PATCH, w // PATCH, PATCH).transpose(1, 3, 0, 2, 4)
    return grid.reshape(-1, 3, PATCH, PATCH)


def _stack(parts: list[np.ndarray]) -> np.ndarray | None:
    return np.concatenate(parts) if parts else None


@dataclass
class Scorers:
    """The networks that score reconstructions, loaded once per evaluation."""

    embedder: FeatureEmbedder
    perceptual: PerceptualMetrics
    segmenter: object | None


def _record(acc: Accumulator, original: Path, reconstruction: Path, nbytes: int, labels: np.ndarray,
            scorers: Scorers, original_patches: np.ndarray) -> None:
    info = RasterReader(original).info
    quality = compare_rasters(original, reconstruction)
    acc.add(nbytes, quality, info.width * info.height, min(info.bands, 3))
    if scorers.segmenter is not None:
        acc.confusion += confusion_matrix(segment_raster(scorers.segmenter, reconstruction), labels, NUM_CLASSES)
    acc.add_patches(_patches(reconstruction), scorers, original_patches)


def _map_layers(layer: Path) -> list[str]:
    """A scene labelled all background has a layer without features; users would get an error
    for an empty layer, but here it is a true map: no layers, i.e. every pixel background."""
    return [str(layer)] if feature_count(MapLayerSpec(str(layer))) > 0 else []


def _as_geotiff(path: Path, target: Path) -> Path:
    gdal.Translate(str(target), str(path), format="GTiff")
    return target


def run_evaluation(
    data_dir: Path, split: str, out_dir: Path, preset: str = "lite", rates: list[int] | None = None,
    device: str = "auto", weights: str | None = None, segmentation: str | None = None,
    limit: int | None = None, quiet: bool = False, baselines: tuple[str, ...] = ("jp2", "webp", "jpeg"),
    strength: float | None = None,
) -> dict:
    """``strength`` decodes with another sampler strength than the preset's (0: z~ directly)."""
    items = load_index(data_dir, split)[:limit]
    method = preset if strength is None else f"{preset} (strength {strength:g})"
    loaded = load_codec(preset, weights, device)
    rates = list(range(len(loaded.preset.rates))) if rates is None else rates
    scorers = Scorers(FeatureEmbedder(), PerceptualMetrics(), load_segmenter(segmentation))
    out_dir.mkdir(parents=True, exist_ok=True)
    accs: dict[tuple[str, str], Accumulator] = {}
    reference = Accumulator("original", "-")
    get = lambda method, rate: accs.setdefault((method, rate), Accumulator(method, rate))  # noqa: E731
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp_name:
        tmp = Path(tmp_name)
        for item in tqdm(items, desc=f"eval {preset}", disable=quiet):
            original = data_dir / item["image"]
            maps = _map_layers(data_dir / item["map"])
            labels = gdal.Open(str(data_dir / item["labels"])).ReadAsArray()
            original_patches = _patches(original)
            reference.add_patches(original_patches, scorers)
            if scorers.segmenter is not None:
                reference.confusion += confusion_matrix(segment_raster(scorers.segmenter, original), labels, NUM_CLASSES)
            codec_bpps = []
            for rate in rates:
                coded, decoded = tmp / f"{item['name']}_{rate}.magc", tmp / f"{item['name']}_{rate}.tif"
                report = encode_raster(original, coded, maps, codec=loaded, rate=rate)
                codec_bpps.append(report.bpp)
                start = time.perf_counter()
                decode_raster(coded, decoded, maps, codec=loaded, strength=strength)
                acc = get(method, str(rate))
                acc.encode_seconds += report.seconds
                acc.decode_seconds += time.perf_counter() - start
                _record(acc, original, decoded, report.file_bytes, labels, scorers, original_patches)
                if "jp2" in baselines:
                    result = encode_baseline(original, tmp / f"{item['name']}_{rate}.jp2", "jp2", report.bpp)
                    jp2 = get("jpeg2000", str(rate))
                    jp2.encode_seconds += result.encode_seconds
                    _record(jp2, original, _as_geotiff(Path(result.path), tmp / f"{item['name']}_{rate}.jp2.tif"), result.bytes, labels, scorers, original_patches)
            for codec in [b for b in baselines if b != "jp2"]:
                # target: the codec's highest rate on this image; above it the baseline "cannot reach"
                result = encode_baseline(original, tmp / f"{item['name']}.{codec}", codec, max(codec_bpps))
                acc = get(codec, "lowest")
                acc.encode_seconds += result.encode_seconds
                acc.unreached += 0 if result.reached else 1
                _record(acc, original, _as_geotiff(Path(result.path), tmp / f"{item['name']}.{codec}.tif"), result.bytes, labels, scorers, original_patches)
    reference_features, reference_inception = _stack(reference.features), _stack(reference.inception)  # once, for every row
    rows = [acc.row(reference_features, reference_inception, scorers.perceptual) for acc in accs.values()]
    summary = {
        "preset": preset, "method": method, "split": split, "images": len(items),
        "segmentation_miou_on_originals": miou_from_confusion(reference.confusion) if reference.confusion.sum() else "unavailable",
        "segmentation_iou_per_class_on_originals": reference.class_ious(),
        "rows": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items() if k in ("method", "rate", "bpp", "psnr", "ms_ssim", "miou", "fd_effnet")} for row in rows],
    }
    table = {"summary": summary, "rows": rows, "weights": loaded.source, "device": str(loaded.device)}
    (out_dir / "table.json").write_text(json.dumps(table, indent=1))
    with open(out_dir / "table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_table(rows, summary, out_dir / "rate_quality.png")
    return table


def plot_table(rows: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for metric, ax in zip(("ms_ssim", "miou", "psnr"), axes):
        for method in dict.fromkeys(r["method"] for r in rows):
            points = sorted((r["bpp"], r[metric]) for r in rows if r["method"] == method and isinstance(r[metric], float))
            if points:
                ax.plot(*zip(*points), marker="o", label=method)
        if metric == "miou" and isinstance(summary.get("segmentation_miou_on_originals"), float):
            ax.axhline(summary["segmentation_miou_on_originals"], color="grey", linestyle="--", label="originals")
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel({"ms_ssim": "MS-SSIM", "miou": "mIoU of segmentation", "psnr": "PSNR (dB)"}[metric])
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{summary['preset']} vs GDAL baselines — {summary['split']} split ({summary['images']} images)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
