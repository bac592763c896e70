"""Helpers and fixtures for the plugin tests (real headless QGIS 3.22 through pytest-qgis).

Layers are always owned by QgsProject and removed after each test: a GDAL-backed layer
still referenced at interpreter exit crashes QGIS. Rasters are 256 px crops of the shared
fixtures (real georeferencing, seconds with the tiny presets).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch
from osgeo import gdal
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtCore import QCoreApplication

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY = {"PRESET": "tiny-lite", "ALLOW_UNTRAINED": True, "DEVICE": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The tiny models gain nothing from several threads, and on a shared CI CPU (or beside
    a training run) OpenMP threads spinning against each other make them 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def crop(source: Path, target: Path, x: int, y: int, size: int = 256) -> Path:
    gdal.Translate(str(target), str(source), srcWin=[x, y, size, size])
    return target


def wait_until(condition, timeout: float = 120.0) -> bool:
    """Spin the Qt event loop (task signals arrive through it) until ``condition()``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        QCoreApplication.processEvents()
        time.sleep(0.01)
    return True


def wait_run(run, timeout: float = 120.0) -> dict:
    """Wait for an AlgorithmRun's ``finished`` signal; returns ok / results / error."""
    outcome: dict = {}
    if run.done:
        raise AssertionError("connect before the run ends")
    run.finished.connect(lambda ok, results, error: outcome.update(ok=ok, results=results, error=error))
    assert wait_until(lambda: bool(outcome), timeout), "the background task did not finish in time"
    return outcome


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial" in p.name]


@pytest.fixture(scope="session")
def crops(tmp_path_factory, fixtures_dir: Path) -> dict[str, Path]:
    """256 px crops: RGB (UTM 18N, byte), sample (UTM 16N, uint16, under the buildings), road (EPSG:4326)."""
    folder = tmp_path_factory.mktemp("crops")
    return {
        "rgb": crop(fixtures_dir / "RGB.byte.tif", folder / "rgb.tif", 200, 200),
        "sample": crop(fixtures_dir / "sample_geotiff.tif", folder / "sample.tif", 0, 0),
        "road": crop(fixtures_dir / "road_mask_input.tif", folder / "road.tif", 500, 500),
        "buildings": fixtures_dir / "geotiff_labels.geojson",
    }


@pytest.fixture
def project(qgis_iface):
    """The project, emptied after the test (it owns every layer the test adds)."""
    project = QgsProject.instance()
    yield project
    project.removeAllMapLayers()
    project.layerTreeRoot().removeAllChildren()
    QCoreApplication.processEvents()


def add_raster(project: QgsProject, path: Path, name: str | None = None) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), name or path.stem)
    assert layer.isValid(), path
    project.addMapLayer(layer)
    return layer


def add_vector(project: QgsProject, path: Path | str, name: str = "buildings") -> QgsVectorLayer:
    layer = QgsVectorLayer(str(path), name, "ogr")
    assert layer.isValid(), path
    project.addMapLayer(layer)
    return layer


@pytest.fixture(scope="module")
def magc_provider(qgis_processing):
    """The MAGC provider registered for a module (the lifecycle test registers its own)."""
    from magc_qgis.processing.provider import MagcProvider

    registry = QgsApplication.processingRegistry()
    provider = MagcProvider()  # referenced here for the whole module, or it vanishes
    assert registry.addProvider(provider)
    yield provider
    registry.removeProvider(provider)


def qgis_env(tmp: Path) -> dict[str, str]:
    """Environment for qgis_process.bin: own profile, offscreen, the venv's packages."""
    runtime = tmp / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    site = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(runtime),
               QGIS_CUSTOM_CONFIG_PATH=str(tmp / "profile"), PYTHONPATH=os.pathsep.join(site), OMP_NUM_THREADS="1")
    return env
