"""The packaged plugin from the command line: ``qgis_process.bin`` (Debian's ``qgis_process``
wrapper passes an option 3.22 rejects). The plugin is staged as ``make package`` lays it
out (vendored ``ext/magc``), in a throw-away QGIS profile; torch comes from this
environment through PYTHONPATH."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from plugin_helpers import crops, qgis_env  # noqa: F401

from magc_qgis import packaging

QGIS_PROCESS = shutil.which("qgis_process.bin")
pytestmark = pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process.bin is not installed")



@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory):
    """Run ``qgis_process.bin ARGS`` with the staged plugin enabled; returns a runner."""
    tmp = tmp_path_factory.mktemp("qgis_process")
    plugins = tmp / "plugins"
    packaging.stage(plugins)
    env = dict(qgis_env(tmp), QGIS_PLUGINPATH=str(plugins))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=300)
        if check:
            assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        return done

    enabled = run("plugins", "enable", "magc_qgis")
    assert "magc_qgis" in enabled.stdout
    return run


def results(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout)["results"]


def test_encode_then_decode(qgis_process, crops, tmp_path: Path) -> None:
    coded, decoded = tmp_path / "rgb.magc", tmp_path / "rgb.tif"
    encoded = qgis_process("run", "magc:encode_raster", "--json", "--", f"INPUT={crops['rgb']}", "PRESET=tiny-lite",
                           "RATE=0", "ALLOW_UNTRAINED=true", "DEVICE=cpu", f"OUTPUT={coded}")
    assert coded.is_file() and results(encoded)["BYTES"] == coded.stat().st_size
    qgis_process("run", "magc:decode_file", "--json", "--", f"INPUT={coded}", "DEVICE=cpu", f"OUTPUT={decoded}")
    from osgeo import gdal

    a, b = gdal.Open(str(crops["rgb"])), gdal.Open(str(decoded))
    assert a.GetGeoTransform() == b.GetGeoTransform() and (a.RasterXSize, a.RasterCount) == (b.RasterXSize, b.RasterCount)
    a = b = None


def test_error_is_reported_not_crashed(qgis_process, tmp_path: Path) -> None:
    bad = tmp_path / "bad.magc"
    bad.write_bytes(b"garbage" * 20)
    done = qgis_process("run", "magc:decode_file", "--", f"INPUT={bad}", "DEVICE=cpu", f"OUTPUT={tmp_path / 'x.tif'}",
                        check=False)
    assert done.returncode == 1 and "MAGC" in (done.stdout + done.stderr)
    assert not (tmp_path / "x.tif").exists()


def test_encode_with_a_vector_map(qgis_process, crops, tmp_path: Path) -> None:
    coded = tmp_path / "sample.magc"
    done = qgis_process("run", "magc:encode_raster", "--", f"INPUT={crops['sample']}", f"MAPS={crops['buildings']}",
                        "MAP_CLASSES=class=building", "PRESET=tiny-lite", "ALLOW_UNTRAINED=true", "DEVICE=cpu",
                        f"OUTPUT={coded}", check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert coded.is_file()
