"""Build the plugin zip (``make package``): standard library only, run from the checkout.

    python3 magc_qgis/packaging.py [--dist dist] [--stage build/plugin]

The zip holds one top folder ``magc_qgis/`` with the plugin code, metadata.txt, LICENSE,
the icon, a vendored copy of the codec library as ``ext/magc/`` and the embedded default
weights (``resources/weights/lite.safetensors`` and its manifest, when present). Caches,
``deps/`` and this script stay out; the zip must stay under the official 25 MB limit.
"""
from __future__ import annotations

import argparse
import configparser
import shutil
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "magc_qgis"
MAX_BYTES = 25 * 1024 * 1024
EMBEDDED_WEIGHTS = ("lite.*", "segmentation.*")  # the default model and the mIoU model, with their manifests
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".git*", "deps", "deps-constraints.txt",
                                 "packaging.py", "*.partial", ".DS_Store")


def version() -> str:
    parser = configparser.ConfigParser()
    parser.read(REPO / "metadata.txt")
    return parser["general"]["version"]


def stage(target: Path) -> Path:
    """Lay out the installed plugin under ``target/magc_qgis`` (replacing it); returns that folder."""
    root = target / PLUGIN
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(REPO / PLUGIN, root, ignore=IGNORED)
    for name in ("metadata.txt", "LICENSE"):
        shutil.copy2(REPO / name, root / name)
    (root / "resources").mkdir(exist_ok=True)
    for icon in sorted((REPO / "resources").glob("icon.*")):
        shutil.copy2(icon, root / "resources" / icon.name)
    shutil.copytree(REPO / "core" / "magc", root / "ext" / "magc", ignore=IGNORED)
    weights = REPO / "resources" / "weights"
    present = sorted({p for pattern in EMBEDDED_WEIGHTS for p in weights.glob(pattern)
                      if p.is_file() and not p.name.endswith((".tmp", ".partial"))})
    if present:
        (root / "resources" / "weights").mkdir(parents=True, exist_ok=True)
        for path in present:
            shutil.copy2(path, root / "resources" / "weights" / path.name)
    return root


def build(dist: Path, staging: Path) -> Path:
    root = stage(staging)
    dist.mkdir(parents=True, exist_ok=True)
    archive = dist / f"{PLUGIN}-{version()}.zip"
    tmp = archive.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(staging).as_posix())
    size = tmp.stat().st_size
    if size > MAX_BYTES:
        tmp.unlink()
        raise SystemExit(f"{archive.name} would be {size / 2**20:.1f} MB, over the 25 MB limit of the plugin repository")
    tmp.replace(archive)
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", default=str(REPO / "dist"))
    parser.add_argument("--stage", default=str(REPO / "build" / "plugin"))
    args = parser.parse_args(argv)
    archive = build(Path(args.dist), Path(args.stage))
    print(f"{archive} ({archive.stat().st_size / 2**20:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
