"""Content digests of what an evaluation reads: the dataset, a calibration file, model weights.

An evaluation is identified by what it was computed from, not by names and paths: data regenerated
in place, a calibration redone to the same path or a retrained model under the same name is a
different evaluation. A `Digests` hashes each file once (per object, i.e. per command), keyed by
(path, size, mtime), so asking again costs a stat.

- a dataset: its manifest and every file under its root (remote URIs: each file's size and
  modification time, not its bytes);
- a model name: a preset built in code (`tiny`, `small`) is its name; a shipped `phantom` model or
  a local directory is the digest of its files (docs and pictures left out); a hub id is the id and
  revision (the hub keeps revisions; offline, nothing newer can appear), a URL the URL.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from craft_ray.errors import ModelError
from craft_ray.models.phantom import (
    is_phantom,
    phantom_classifier_dir,
    phantom_diffusion_dir,
    phantom_vlm_dir,
)

PRESETS = ("tiny", "small")
SKIPPED_SUFFIXES = (".md", ".png", ".jpg", ".jpeg")  # docs and pictures beside the weights
CHUNK = 1 << 20


class Digests:
    """sha256 digests (hex, 16 characters) of files, directories, datasets and models, each file read once."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, int, int], str] = {}

    def file(self, path: str | Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._files:
            h = hashlib.sha256()
            with path.open("rb") as handle:
                while block := handle.read(CHUNK):
                    h.update(block)
            self._files[key] = h.hexdigest()
        return self._files[key][:16]

    def directory(self, root: str | Path, skip: tuple[str, ...] = ()) -> str:
        """Every file under `root` (relative path and content), hidden files and `skip` suffixes left out."""
        root = Path(root).resolve()
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and not p.name.endswith(skip)
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        return _combine({str(p.relative_to(root)): self.file(p) for p in files})

    def dataset(self, uri: str) -> str:
        """A canonical dataset: its manifest and the parquet files of every split."""
        if "://" not in uri or uri.startswith("file://"):
            return self.directory(uri.removeprefix("file://"))
        fs, root = pafs.FileSystem.from_uri(uri)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        listing = {
            i.path.removeprefix(root): f"{i.size}@{i.mtime_ns}" for i in infos if i.type == pafs.FileType.File
        }
        return _combine(listing)

    def model(self, spec: str | None, kind: str, revision: str | None = None) -> str | None:
        """`kind`: diffusion | vlm | classifier | mllm (where a phantom name resolves)."""
        if spec is None:
            return None
        if spec in PRESETS:
            return f"preset:{spec}"
        if spec.startswith(("http://", "https://", "open_clip:")):
            return spec
        if is_phantom(spec):
            return f"phantom:{self.directory(_phantom_dir(spec, kind), SKIPPED_SUFFIXES)}"
        local = Path(spec).expanduser()
        if local.is_dir():
            return f"dir:{self.directory(local, SKIPPED_SUFFIXES)}"
        if local.is_file():
            return f"file:{self.file(local)}"
        return f"hub:{spec}@{revision or 'main'}"


def _phantom_dir(spec: str, kind: str) -> Path:
    resolvers = {
        "diffusion": phantom_diffusion_dir,
        "vlm": phantom_vlm_dir,
        "classifier": phantom_classifier_dir,
    }
    if kind not in resolvers:
        raise ModelError(f"no shipped phantom {kind} model ({spec!r})")
    return resolvers[kind](spec)


def _combine(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
