"""Weights too large for the plugin zip, fetched on first use.

A small JSON manifest in the plugin (``weights_manifest.json``) gives, per preset, the file
name, the URL and its SHA-256. The download streams to a temporary name in the destination
folder while hashing, and is renamed only when the checksum matches: an interrupted or
corrupted download never looks like a weights file. Works with http(s):// and file:// URLs.
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MANIFEST = Path(__file__).resolve().parent / "weights_manifest.json"
CHUNK = 1 << 20


class DownloadError(Exception):
    """The download failed or its checksum did not match; nothing was left behind."""


@dataclass
class WeightsEntry:
    preset: str
    file: str
    url: str
    sha256: str
    bytes: int = 0
    note: str = ""


def read_manifest(path: str | Path = MANIFEST) -> dict[str, WeightsEntry]:
    data = json.loads(Path(path).read_text())
    return {
        preset: WeightsEntry(preset, item["file"], item.get("url", ""), item.get("sha256", "").lower(),
                             int(item.get("bytes", 0)), item.get("note", ""))
        for preset, item in data.get("weights", {}).items()
    }


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    entry: WeightsEntry,
    folder: str | Path,
    progress: Callable[[float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``entry`` into ``folder``; returns the final path (kept if already valid)."""
    if not entry.url or not entry.sha256:
        raise DownloadError(
            f"no download is published yet for {entry.preset}: put {entry.file} in {folder} yourself"
            + (f" ({entry.note})" if entry.note else "")
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / entry.file
    if target.is_file() and sha256_of(target) == entry.sha256:
        return target
    tmp = folder / f".{entry.file}.{uuid.uuid4().hex[:8]}.partial"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(tmp, "wb") as out:  # noqa: S310 (URL from our manifest)
            total = int(response.headers.get("Content-Length") or entry.bytes or 0)
            done = 0
            for block in iter(lambda: response.read(CHUNK), b""):
                if cancel is not None and cancel():
                    raise DownloadError("download cancelled")
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress is not None and total:
                    progress(min(done / total, 1.0))
        if digest.hexdigest() != entry.sha256:
            raise DownloadError(f"checksum mismatch for {entry.url}: got {digest.hexdigest()}, expected {entry.sha256}")
        os.replace(tmp, target)
    except OSError as exc:  # URLError is an OSError
        raise DownloadError(f"cannot download {entry.url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target
