"""Reading and writing the sweep directory, a local path or a URI (file://, s3://, gs://), through
pyarrow filesystems. Small files are written to a temporary name and moved into place (a rename
on local disks; object stores write whole objects anyway)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


def absolute_uri(path_or_uri: str) -> str:
    """Local paths become absolute (Ray workers run elsewhere); URIs stay as they are."""
    if "://" in path_or_uri:
        return path_or_uri.rstrip("/")
    return str(Path(path_or_uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def listdir(uri: str) -> list[str]:
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))


def move(uri: str, to: str) -> None:
    """Rename a file or directory (within one filesystem)."""
    fs, path = _fs(uri)
    fs.move(path, _fs(to)[1])


def read_text(uri: str) -> str | None:
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as handle:
        return handle.read().decode()


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = _fs(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex[:8]}.tmp"
    with fs.open_output_stream(tmp) as handle:
        handle.write(data)
    fs.move(tmp, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def read_json(uri: str) -> Any | None:
    text = read_text(uri)
    return None if text is None else json.loads(text)


def write_json(uri: str, data: Any) -> None:
    write_text(uri, json.dumps(data, indent=2, sort_keys=True) + "\n")


def local_path(uri: str) -> Path | None:
    """The local path of a local path or file:// URI; None for remote storage."""
    if "://" not in uri:
        return Path(uri)
    if uri.startswith("file://"):
        return Path(_fs(uri)[1])
    return None


def download_dir(uri: str, into: Path) -> Path:
    """A remote directory copied to `into` (local ones are used where they are)."""
    local = local_path(uri)
    if local is not None:
        return local
    fs, path = _fs(uri)
    into.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(into), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return into
