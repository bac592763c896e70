"""The plugin zip (official repository rules) and the weights download helper (checksum,
temporary name then rename), tested against file:// and a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import configparser
import hashlib
import http.server
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from magc_qgis import packaging
from magc_qgis.weights_download import DownloadError, WeightsEntry, download, read_manifest

REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                     "tracker", "repository", "hasProcessingProvider", "experimental", "icon", "tags", "homepage")


def test_package_follows_the_repository_rules(tmp_path: Path) -> None:
    archive = packaging.build(tmp_path / "dist", tmp_path / "stage")
    assert archive.name == f"magc_qgis-{packaging.version()}.zip"
    assert archive.stat().st_size < 25 * 1024 * 1024
    with zipfile.ZipFile(archive) as handle:
        names = handle.namelist()
        metadata = handle.read("magc_qgis/metadata.txt").decode()
    assert {name.split("/")[0] for name in names} == {"magc_qgis"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/.git" in n or "/deps/" in n]
    for required in ("magc_qgis/__init__.py", "magc_qgis/LICENSE", "magc_qgis/resources/icon.png",
                     "magc_qgis/ext/magc/api.py", "magc_qgis/ext/magc/presets/lite.json",
                     "magc_qgis/weights_manifest.json", "magc_qgis/processing/provider.py"):
        assert required in names, required
    assert "magc_qgis/packaging.py" not in names
    parser = configparser.ConfigParser()
    parser.read_string(metadata)
    general = parser["general"]
    assert all(general.get(key) for key in REQUIRED_METADATA)
    assert general["qgisMinimumVersion"] == "3.22" and general["hasProcessingProvider"] == "yes"
    assert f"magc_qgis/{general['icon']}" in names
    weights = Path(packaging.REPO / "resources" / "weights" / "lite.safetensors")
    assert ("magc_qgis/resources/weights/lite.safetensors" in names) == weights.is_file()


def test_plugin_code_uses_qgis_pyqt_only() -> None:
    for path in (packaging.REPO / "magc_qgis").rglob("*.py"):
        text = path.read_text()
        assert "from PyQt5" not in text and "import PyQt5" not in text, path


@pytest.fixture
def weights_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "served" / "magc-test.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"\x00weights" * 400_000)  # 3.2 MB: several 1 MB chunks
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_from_a_file_url_checks_the_checksum(weights_file, tmp_path: Path) -> None:
    source, digest = weights_file
    folder = tmp_path / "user-weights"
    entry = WeightsEntry("magc-test", source.name, source.as_uri(), digest)
    fractions: list[float] = []
    target = download(entry, folder, progress=fractions.append)
    assert target.read_bytes() == source.read_bytes() and fractions[-1] == pytest.approx(1.0)
    assert sorted(p.name for p in folder.iterdir()) == [source.name]  # no temporary file left
    assert download(entry, folder) == target  # already there and valid: kept

    bad = WeightsEntry("magc-test", "other.safetensors", source.as_uri(), "0" * 64)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(bad, folder)
    assert sorted(p.name for p in folder.iterdir()) == [source.name]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_download_over_http_on_localhost(weights_file, tmp_path: Path) -> None:
    source, digest = weights_file
    handler = partial(QuietHandler, directory=str(source.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{source.name}"
        target = download(WeightsEntry("magc-test", source.name, url, digest), tmp_path / "w")
        assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
        with pytest.raises(DownloadError, match="cannot download"):
            download(WeightsEntry("magc-test", "missing.bin", url + ".missing", digest), tmp_path / "w")
        calls = iter([False, True])
        with pytest.raises(DownloadError, match="cancelled"):
            download(WeightsEntry("magc-test", "c.bin", url, digest), tmp_path / "c", cancel=lambda: next(calls, True))
        assert list((tmp_path / "c").iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()


def test_manifest_without_url_says_what_to_do(tmp_path: Path) -> None:
    entry = read_manifest()["magc-sd21"]
    assert entry.file == "magc-sd21.safetensors"
    if not entry.url:
        with pytest.raises(DownloadError, match="no download is published yet"):
            download(entry, tmp_path)
