"""``magc``: encode, decode, info, roundtrip, eval, train, prepare-data, convert-official.

Every error a user can cause ends in one line on stderr and exit status 2; progress bars go
to stderr; ``info`` and the JSON reports go to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from .errors import MagcError
from .train.commands import TRAINING_COMMANDS, add_training_commands


@contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator:
    if quiet:
        yield None
        return
    bar = tqdm(total=1000, desc=label, unit="‰", dynamic_ncols=True, file=sys.stderr, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--weights", help="weights file or folder (default: the preset's shipped or downloaded weights)")
    parser.add_argument("--sd-weights", help="local diffusers folder of Stable Diffusion 2.1-base (for *-sd21 presets)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_map_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--map", action="append", default=[], metavar="LAYER",
        help="vector layer (any OGR format) as PATH[|layername=NAME][|class=CLASS][|field=FIELD]; repeatable. "
             "RGB-map presets also take one rendered map raster",
    )


def _add_strength_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strength", type=float, metavar="S",
        help="decoder sampling strength from 0 to 1 instead of the preset's (lite: 0.6): 0 decodes z~ directly, "
             "without the denoiser (fastest); 1 generates from pure noise. The file does not depend on it",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magc", description="Map-assisted generative compression of georeferenced rasters.")
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="compress a raster into a .magc file")
    enc.add_argument("input")
    enc.add_argument("-o", "--output", required=True)
    _add_map_option(enc)
    enc.add_argument("--preset", default="lite")
    group = enc.add_mutually_exclusive_group()
    group.add_argument("--rate", type=int, help="operating point index (see `magc presets`)")
    group.add_argument("--bpp", type=float, help="target bits per pixel: picks the highest rate that meets it")
    enc.add_argument("--embed-map", action="store_true", help="store the class map losslessly in the file (self-contained; costs bytes)")
    enc.add_argument("--seed", type=int, default=0, help="seed of the decoder's sampling noise (stored in the file)")
    enc.add_argument("--allow-untrained", action="store_true", help="allow a preset without trained weights (random output; for testing)")
    _add_model_options(enc)

    dec = sub.add_parser("decode", help="reconstruct a GeoTIFF from a .magc file")
    dec.add_argument("input")
    dec.add_argument("-o", "--output", required=True)
    _add_map_option(dec)
    dec.add_argument("--ignore-map-mismatch", action="store_true", help="decode even if the map differs from the encoder's")
    _add_strength_option(dec)
    _add_model_options(dec)

    info = sub.add_parser("info", help="print a .magc file's header as JSON")
    info.add_argument("input")

    rt = sub.add_parser("roundtrip", help="encode, decode and measure: writes the file, the reconstruction and a JSON report")
    rt.add_argument("input")
    rt.add_argument("-o", "--output", required=True, help="output folder")
    _add_map_option(rt)
    rt.add_argument("--preset", default="lite")
    group = rt.add_mutually_exclusive_group()
    group.add_argument("--rate", type=int)
    group.add_argument("--bpp", type=float)
    rt.add_argument("--embed-map", action="store_true")
    rt.add_argument("--allow-untrained", action="store_true")
    _add_model_options(rt)

    sub.add_parser("presets", help="list the presets, their rates and whether trained weights are installed")

    ev = sub.add_parser("eval", help="evaluate a codec and GDAL baselines over prepared validation data")
    ev.add_argument("--data", default="data/dubai", help="folder made by `magc prepare-data`")
    ev.add_argument("--split", default="val")
    ev.add_argument("-o", "--output", default="results/eval", help="output folder (table JSON/CSV and plot PNG)")
    ev.add_argument("--preset", default="lite")
    ev.add_argument("--rates", help="comma-separated rate indexes (default: all)")
    ev.add_argument("--segmentation", help="segmentation model weights (default: resources/weights/segmentation.safetensors)")
    ev.add_argument("--limit", type=int, help="evaluate only the first N images")
    ev.add_argument("--baselines", default="jp2,webp,jpeg", help="GDAL baselines to run beside the codec (comma-separated, or 'none')")
    ev.add_argument("--update-manifest", action="store_true", help="record the measured bpp per rate in the weights' manifest")
    _add_strength_option(ev)
    _add_model_options(ev)

    demo = sub.add_parser("demo", help="compress and decompress a real validation image with the shipped weights")
    demo.add_argument("--shared-data", default="../shared/data")
    demo.add_argument("-o", "--output", default="out/demo")
    demo.add_argument("--rate", type=int)
    demo.add_argument("--device", default="auto")

    add_training_commands(sub)

    bench = sub.add_parser("bench", help="speed and memory of the lite codec against GDAL JPEG 2000 (writes JSON)")
    bench.add_argument("-o", "--output", default="results/bench.json")
    bench.add_argument("--shared-data", default="../shared/data")
    bench.add_argument("--sizes", default="2048,5000,10000", help="square raster sizes for the memory test")
    bench.add_argument("--repeats", type=int, default=5, help="speed runs (default 5); the median is reported, since single runs can vary by 10-20 %% on a busy or virtual machine")

    conv = sub.add_parser("convert-official", help="convert the released MAGC checkpoint into magc-sd21 weights")
    conv.add_argument("checkpoint")
    conv.add_argument("-o", "--output", required=True, help="output folder")
    return parser


def _encode(args: argparse.Namespace) -> int:
    from .api import encode_raster

    with progress_bar("encode", args.quiet) as progress:
        report = encode_raster(
            args.input, args.output, args.map, preset=args.preset, rate=args.rate, bpp=args.bpp, device=args.device,
            weights=args.weights, allow_untrained=args.allow_untrained, embed_map=args.embed_map, seed=args.seed,
            progress=progress, sd_weights=args.sd_weights,
        )
    extra = f", map {report.map_bytes} B (bpp without map {report.bpp_without_map:.4f})" if report.map_bytes else ""
    print(f"{report.output}: {report.file_bytes} bytes, {report.bpp:.4f} bpp (rate {report.rate}, preset {report.preset}, "
          f"device {report.device}, {report.seconds:.1f} s{extra})", file=sys.stderr)
    return 0


def _decode(args: argparse.Namespace) -> int:
    from .api import decode_raster

    with progress_bar("decode", args.quiet) as progress:
        report = decode_raster(args.input, args.output, args.map, device=args.device, weights=args.weights,
                               ignore_map_mismatch=args.ignore_map_mismatch, progress=progress, sd_weights=args.sd_weights,
                               strength=args.strength)
    print(f"{report.output}: {report.width}x{report.height} (preset {report.preset}, device {report.device}, {report.seconds:.1f} s)", file=sys.stderr)
    return 0


def _roundtrip(args: argparse.Namespace) -> int:
    from .api import roundtrip

    with progress_bar("roundtrip", args.quiet) as progress:
        report = roundtrip(args.input, args.output, args.map, progress=progress, preset=args.preset, rate=args.rate,
                           bpp=args.bpp, device=args.device, weights=args.weights, allow_untrained=args.allow_untrained,
                           embed_map=args.embed_map, sd_weights=args.sd_weights)
    print(json.dumps({k: report[k] for k in ("file", "reconstruction", "bpp", "psnr", "ms_ssim")}, indent=1))
    return 0


def _presets(args: argparse.Namespace) -> int:
    from .config import available_presets, load_preset
    from .models.loading import find_weights
    from .models.weights import measured_bpp

    rows = []
    for name in available_presets():
        preset = load_preset(name)
        path = find_weights(preset)
        rows.append({
            "preset": name, "rates": len(preset.rates), "default_rate": preset.default_rate,
            "map": preset.map.kind, "weights": str(path) if path else None,
            "measured_bpp": measured_bpp(path), "description": preset.description,
        })
    print(json.dumps(rows, indent=1))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .baselines import CODECS
    from .evaluation import run_evaluation

    rates = [int(r) for r in args.rates.split(",")] if args.rates else None
    baselines = tuple(b for b in args.baselines.split(",") if b and b != "none")
    unknown = set(baselines) - set(CODECS)
    if unknown:
        raise MagcError(f"unknown baseline(s) {', '.join(sorted(unknown))}: choose from {', '.join(CODECS)} or none")
    table = run_evaluation(Path(args.data), args.split, Path(args.output), args.preset, rates=rates, device=args.device,
                           weights=args.weights, segmentation=args.segmentation, limit=args.limit, quiet=args.quiet,
                           baselines=baselines, strength=args.strength)
    if args.update_manifest:
        from .config import load_preset
        from .models.loading import find_weights
        from .models.weights import manifest_path

        weights = find_weights(load_preset(args.preset), args.weights)
        manifest = json.loads(manifest_path(weights).read_text())
        manifest["bpp_per_rate"] = {row["rate"]: row["bpp"] for row in table["rows"] if row["method"] == table["summary"]["method"]}
        manifest["bpp_measured_on"] = f"{args.split} split of {args.data} ({table['summary']['images']} images), `magc eval`"
        manifest_path(weights).write_text(json.dumps(manifest, indent=1))
    print(json.dumps(table["summary"], indent=1))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.shared_data), Path(args.output), args.rate, args.device)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(Path(args.output), Path(args.shared_data), [int(s) for s in args.sizes.split(",")], args.repeats)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert_official

    path = convert_official(args.checkpoint, args.output)
    print(f"converted weights written to {path}", file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    from .api import read_info

    print(json.dumps(read_info(args.input), indent=1))
    return 0


COMMANDS = {
    "encode": _encode, "decode": _decode, "info": _info, "roundtrip": _roundtrip, "presets": _presets,
    "eval": _eval, "convert-official": _convert, "demo": _demo, "bench": _bench, **TRAINING_COMMANDS,
}


def quiet_library_warnings() -> None:
    """Deprecation chatter of torch/diffusers/compressai is not the user's business."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|diffusers|huggingface_hub|compressai|transformers)")
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")  # GDAL errors still raise; its warnings stay quiet


GDAL_CACHE_BYTES = 64 * 2**20


def bound_gdal_cache() -> None:
    """GDAL's default block cache is 5 % of RAM (1.2 GB on a 24 GB machine) and fills as a
    raster is read and written, so the CLI's peak memory grew with raster size (make bench:
    +200 MB at 10 000 px); window-by-window I/O needs little. A user's GDAL_CACHEMAX wins;
    the plugin leaves QGIS's cache alone."""
    if "GDAL_CACHEMAX" not in os.environ:
        from osgeo import gdal

        gdal.SetCacheMax(GDAL_CACHE_BYTES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_warnings()
    bound_gdal_cache()
    try:
        return COMMANDS[args.command](args)
    except MagcError as exc:
        print(f"magc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, MemoryError) as exc:
        print(f"magc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("magc: interrupted; no partial output was left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
