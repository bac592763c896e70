"""Dependency check and the pip command that installs what is missing into ``deps/``.

Deep-learning plugins break QGIS most often through their dependencies (numpy 2 pulled
into QGIS's Python, source builds, resolver conflicts). So: binary wheels only, into the
plugin's own folder, with a constraints file that pins the numpy / shapely / pyproj QGIS
already has and forbids GDAL; and never without the user asking for it.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .paths import DEPS_DIR, EXT_DIR

# (import name, pip requirement, why it is needed)
REQUIREMENTS: list[tuple[str, str, str]] = [
    ("torch", "torch>=2.1", "runs the neural networks"),
    ("torchvision", "torchvision", "needed by compressai"),
    ("diffusers", "diffusers>=0.30", "the diffusion denoiser and schedulers"),
    ("compressai", "compressai>=1.2.6", "entropy coding"),
    ("safetensors", "safetensors>=0.4", "reads the model weights"),
    ("pytorch_msssim", "pytorch-msssim>=1.0", "MS-SSIM for comparisons"),
    ("shapely", "shapely>=2.0", "map geometries"),
    ("tqdm", "tqdm>=4.60", "progress reporting of the library"),
]
# Packages QGIS itself ships: an installer must never replace them.
PINNED_FROM_QGIS = ("numpy", "shapely", "pyproj")
FORBIDDEN = ("GDAL",)


@dataclass
class Missing:
    module: str
    requirement: str
    reason: str
    error: str  # "not installed" or the import error text


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def quick_check() -> list[str]:
    """Modules that are not even present (cheap: nothing is imported). Used at plugin load."""
    names = [name for name, _, _ in REQUIREMENTS] + ["magc"]
    return [name for name in names if not _find(name)]


def avoid_llvm_clash() -> bool:
    """Keep torch from importing triton when another LLVM is already in the process.

    On Linux, Mesa's OpenGL driver (loaded by QGIS's canvas) brings libLLVM into the global
    symbol scope; triton's own LLVM then binds to it and QGIS crashes at ``import triton``,
    which torch does whenever triton is installed (torch._dynamo, pulled in by compressai).
    MAGC never uses triton (no torch.compile), so it is made unimportable for this process.
    """
    if not sys.platform.startswith("linux") or "triton" in sys.modules:
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # `import triton` raises ImportError; torch then runs without it
    return True


def full_check() -> list[Missing]:
    """Import every dependency for real, so a broken install (e.g. a CUDA DLL) is reported too."""
    avoid_llvm_clash()
    missing = []
    for module, requirement, reason in REQUIREMENTS + [("magc", "magc (vendored in the plugin)", "the codec library")]:
        try:
            importlib.import_module(module)
        except Exception as exc:  # an import can fail with anything: OSError for DLLs, RuntimeError...
            text = "not installed" if isinstance(exc, ModuleNotFoundError) and exc.name == module else f"{type(exc).__name__}: {exc}"
            missing.append(Missing(module, requirement, reason, text))
    return missing


def missing_text(missing: list[Missing]) -> str:
    if not missing:
        return "All dependencies are installed."
    lines = ["MAGC needs these Python packages, which QGIS's Python cannot import:"]
    lines += [f"  - {m.module} ({m.reason}): {m.error}" for m in missing]
    if any(m.module == "magc" for m in missing):
        lines.append(f"The codec library 'magc' ships inside the plugin ({EXT_DIR}); reinstall the plugin zip if it is missing.")
    lines.append("Install them into the plugin's own folder with the button below, or run this command yourself:")
    lines.append("  " + " ".join(_quote(a) for a in pip_command(missing)))
    return "\n".join(lines)


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c in arg for c in " <>=") else arg


def python_executable() -> str:
    """The Python interpreter behind QGIS (inside QGIS ``sys.executable`` is QGIS itself)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.executable)] if Path(sys.executable).name.lower().startswith("python") else []
    prefix = Path(sys.exec_prefix)
    candidates += [prefix / "bin" / f"python{version}", prefix / "bin" / "python3", prefix / "python.exe", prefix / "python3.exe"]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(f"python{version}") or shutil.which("python3")
    return found or "python3"


def installed_version(distribution: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover (Python < 3.8)
        return None
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def constraints_text() -> str:
    """Pins for what QGIS already has; GDAL is made uninstallable (no such version exists)."""
    lines = ["# written by MAGC for QGIS: keep QGIS's own packages"]
    for name in PINNED_FROM_QGIS:
        version = installed_version(name)
        if version:
            lines.append(f"{name}=={version}")
    lines.append("numpy<2")
    if not installed_version("shapely") and _qgis_geos() < (3, 12):
        # QGIS links its GEOS into the process: shapely >= 2.1 then asks it for 4-D WKB,
        # which GEOS < 3.12 refuses ("WKB output dimension must be 2 or 3")
        lines.append("shapely<2.1")
    lines += [f"{name}==0.0.0.dev0+never" for name in FORBIDDEN]
    return "\n".join(lines) + "\n"


def _qgis_geos() -> tuple[int, int]:
    try:
        from qgis.core import Qgis

        return Qgis.geosVersionMajor(), Qgis.geosVersionMinor()
    except Exception:  # outside QGIS: no constraint needed
        return (99, 0)


def constraints_file() -> Path:
    path = DEPS_DIR.parent / "deps-constraints.txt"
    path.write_text(constraints_text())
    return path


def pip_command(missing: list[Missing] | None = None, extra: list[str] | None = None) -> list[str]:
    """``python -m pip install --target deps/ --only-binary=:all: -c constraints ...``."""
    missing = full_check() if missing is None else missing
    wanted = [m.requirement for m in missing if m.module != "magc"]
    return [
        python_executable(), "-m", "pip", "install", "--target", str(DEPS_DIR), "--only-binary=:all:",
        "--constraint", str(DEPS_DIR.parent / "deps-constraints.txt"), "--disable-pip-version-check",
        "--no-warn-script-location", *(extra or []), *wanted,
    ]


def activate_deps() -> None:
    """After an install: make ``deps/`` importable in this session."""
    if str(DEPS_DIR) not in sys.path and DEPS_DIR.is_dir():
        sys.path.append(str(DEPS_DIR))
    importlib.invalidate_caches()


def install_environment() -> dict[str, str]:
    """Environment for the pip process: no user site, no inherited PYTHONPATH surprises."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONNOUSERSITE"] = "1"
    return env
